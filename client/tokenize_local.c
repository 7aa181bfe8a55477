#include "client/tokenize_local.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "tokenizer/tokenizer.h"

static void usage(void)
{
    fputs("usage: starrelay tokenize --model DIR [--no-bos] TEXT\n", stderr);
}

int tokenize_local_main(int argc, char **argv)
{
    const char *model = NULL, *text = NULL;
    int add_special = 1;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) {
            model = argv[++i];
        } else if (!strcmp(argv[i], "--no-bos")) {
            add_special = 0;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage();
            return 0;
        } else if (argv[i][0] == '-' && argv[i][1] == '-' && !text) {
            fprintf(stderr, "starrelay tokenize: unknown option '%s'\n", argv[i]);
            return 2;
        } else if (!text) {
            text = argv[i];
        } else {
            fprintf(stderr, "starrelay tokenize: one TEXT argument expected (quote it)\n");
            return 2;
        }
    }
    if (!model || !text) {
        usage();
        return 2;
    }
    sr_tokenizer *tok = tokenizer_load(model);
    if (!tok) {
        fprintf(stderr, "starrelay tokenize: %s\n", sr_error_get());
        return 1;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    if (tokenizer_encode(tok, text, strlen(text), add_special, &ids, &n) != 0) {
        fprintf(stderr, "starrelay tokenize: %s\n", sr_error_get());
        tokenizer_free(tok);
        return 1;
    }
    putchar('[');
    for (size_t i = 0; i < n; i++)
        printf("%s%d", i ? ", " : "", ids[i]);
    puts("]");
    free(ids);
    tokenizer_free(tok);
    return 0;
}
