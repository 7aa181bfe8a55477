#include "common/text_file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

int text_file_read(const char *path, char **out)
{
    *out = NULL;
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f)
        return sr_error_set("cannot open '%s': %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        len += fread(buf + len, 1, cap - len - 1, f);
        if (len < cap - 1)
            break;
        cap *= 2;
        char *nb = realloc(buf, cap);
        if (!nb)
            free(buf);
        buf = nb;
    }
    int err = ferror(f);
    if (f != stdin)
        fclose(f);
    if (!buf)
        return sr_error_set("out of memory reading '%s'", path);
    if (err) {
        free(buf);
        return sr_error_set("error reading '%s'", path);
    }
    buf[len] = '\0';
    if (strlen(buf) != len) {
        free(buf);
        return sr_error_set("'%s' contains a NUL byte; expected text", path);
    }
    *out = buf;
    return 0;
}
