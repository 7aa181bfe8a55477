/* `starrelay tokenize --model DIR [--no-bos] TEXT`: ids from a local model
 * directory's tokenizer, no server (works in builds without gRPC). */
#ifndef SR_CLIENT_TOKENIZE_LOCAL_H
#define SR_CLIENT_TOKENIZE_LOCAL_H

/* argv after "tokenize"; returns the exit code. */
int tokenize_local_main(int argc, char **argv);

#endif
