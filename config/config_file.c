#include "config/config_file.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/text_file.h"

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

/* One line, modified in place. */
static int apply_line(char *line, const char *name, int lineno, const sr_option *table,
                      void *dst)
{
    char origin[300];
    snprintf(origin, sizeof origin, "%s:%d", name, lineno);
    char *s = trim(line);
    if (!*s || *s == '#')
        return 0;
    char *eq = strchr(s, '=');
    if (!eq)
        return sr_error_set("%s: expected 'name = value', got '%s'", origin, s);
    *eq = '\0';
    char *key = trim(s), *value = trim(eq + 1);
    if (*value == '"') {
        char *close = strrchr(value + 1, '"');
        if (!close)
            return sr_error_set("%s: unterminated quote in the value of '%s'", origin, key);
        char *rest = trim(close + 1);
        if (*rest && *rest != '#')
            return sr_error_set("%s: unexpected text after the quoted value of '%s'", origin, key);
        *close = '\0';
        value++;
    } else {
        /* An unquoted value ends at a comment. */
        char *hash = strstr(value, " #");
        if (hash)
            *hash = '\0';
        value = trim(value);
    }
    if (!*key)
        return sr_error_set("%s: missing option name before '='", origin);
    if (!strcmp(key, "config"))
        return sr_error_set("%s: 'config' cannot be set inside a configuration file", origin);
    if (!option_table_find(table, key))
        return sr_error_set("%s: unknown option '%s' (the names are the command-line options "
                            "without the dashes)",
                            origin, key);
    char opt_origin[440];
    snprintf(opt_origin, sizeof opt_origin, "%s: %s", origin, key);
    return option_table_set(table, dst, key, value, opt_origin);
}

int config_text_apply(const char *text, const char *name, const sr_option *table, void *dst)
{
    char *copy = strdup(text);
    if (!copy)
        return sr_error_set("out of memory");
    int lineno = 0, rc = 0;
    for (char *p = copy; p && rc == 0;) {
        char *nl = strchr(p, '\n');
        if (nl)
            *nl = '\0';
        lineno++;
        rc = apply_line(p, name, lineno, table, dst);
        p = nl ? nl + 1 : NULL;
    }
    free(copy);
    return rc;
}

int config_file_apply(const char *path, const sr_option *table, void *dst)
{
    char *buf;
    if (text_file_read(path, &buf) != 0)
        return sr_error_prefix("configuration file: ");
    int rc = config_text_apply(buf, path, table, dst);
    free(buf);
    return rc;
}
