/* The daemon's configuration file: one `name = value` per line, where the
 * names are the command-line options without the dashes. Blank lines and
 * lines starting with '#' are ignored; a value may be double-quoted to
 * keep spaces or '#'. The command line overrides the file because it is
 * applied after it. */
#ifndef SR_CONFIG_CONFIG_FILE_H
#define SR_CONFIG_CONFIG_FILE_H

#include "config/option_table.h"

/* Applies every line of `path` to dst through the table; errors name the
 * file, the line and the option. */
int config_file_apply(const char *path, const sr_option *table, void *dst);
/* Same from a string (tests); `name` is used in messages. */
int config_text_apply(const char *text, const char *name, const sr_option *table, void *dst);

#endif
