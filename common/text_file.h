/* Reading a whole text file (a context, a system prompt, a configuration
 * file) into memory. */
#ifndef SR_COMMON_TEXT_FILE_H
#define SR_COMMON_TEXT_FILE_H

/* Reads `path` ("-" = standard input) into a malloc'd NUL-terminated
 * buffer. A NUL byte inside is an error (the callers want text, and a NUL
 * would silently cut it short). -1 with sr_error naming the file on any
 * failure. */
int text_file_read(const char *path, char **out);

#endif
