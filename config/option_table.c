#include "config/option_table.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

const sr_option *option_table_find(const sr_option *table, const char *name)
{
    for (const sr_option *o = table; o->name; o++)
        if (!strcmp(o->name, name))
            return o;
    return NULL;
}

int option_parse_bytes(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !isfinite(v) || v < 0)
        return -1;
    double mult = 1;
    switch (*end) {
    case 'k': case 'K': mult = 1024.0; end++; break;
    case 'm': case 'M': mult = 1024.0 * 1024; end++; break;
    case 'g': case 'G': mult = 1024.0 * 1024 * 1024; end++; break;
    case 't': case 'T': mult = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: break;
    }
    if (*end == 'i' || *end == 'I')
        end++;
    if (*end == 'b' || *end == 'B')
        end++;
    if (*end || v * mult > (double)INT64_MAX)
        return -1;
    *out = (int64_t)(v * mult);
    return 0;
}

static bool choice_ok(const char *choices, const char *v)
{
    size_t n = strlen(v);
    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && !strncmp(p, v, n))
            return true;
        p += len + (bar != NULL);
    }
    return false;
}

int option_table_set(const sr_option *table, void *dst, const char *name, const char *value,
                     const char *origin)
{
    const sr_option *o = option_table_find(table, name);
    if (!o)
        return sr_error_set("%s: unknown option '%s'", origin, name);
    char *field = (char *)dst + o->offset;
    char *end;
    errno = 0;
    switch (o->kind) {
    case SR_OPT_STRING:
    case SR_OPT_CHOICE: {
        if (o->kind == SR_OPT_CHOICE && !choice_ok(o->choices, value))
            return sr_error_set("%s: expected one of %s, got '%s'", origin, o->choices, value);
        char *copy = strdup(value);
        if (!copy)
            return sr_error_set("out of memory");
        free(*(char **)field);
        *(char **)field = copy;
        return 0;
    }
    case SR_OPT_INT:
    case SR_OPT_INT64: {
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end || (double)v < o->min || (double)v > o->max)
            return sr_error_set("%s: expected an integer in [%.0f, %.0f], got '%s'", origin, o->min,
                                o->max, value);
        if (o->kind == SR_OPT_INT)
            *(int *)field = (int)v;
        else
            *(int64_t *)field = v;
        return 0;
    }
    case SR_OPT_BYTES: {
        int64_t v;
        if (option_parse_bytes(value, &v) != 0 || (double)v < o->min || (double)v > o->max)
            return sr_error_set("%s: expected a size in bytes (suffix K, M, G or T allowed) in "
                                "[%.0f, %.0f], got '%s'",
                                origin, o->min, o->max, value);
        *(int64_t *)field = v;
        return 0;
    }
    case SR_OPT_DOUBLE: {
        double v = strtod(value, &end);
        if (errno || end == value || *end || !isfinite(v) || v < o->min || v > o->max)
            return sr_error_set("%s: expected a number in [%g, %g], got '%s'", origin, o->min,
                                o->max, value);
        *(double *)field = v;
        return 0;
    }
    case SR_OPT_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "yes") || !strcmp(value, "1") ||
            !strcmp(value, "on"))
            *(bool *)field = true;
        else if (!strcmp(value, "false") || !strcmp(value, "no") || !strcmp(value, "0") ||
                 !strcmp(value, "off"))
            *(bool *)field = false;
        else
            return sr_error_set("%s: expected true or false, got '%s'", origin, value);
        return 0;
    }
    return sr_error_set("%s: bad option table entry", origin);
}

int option_table_parse_argv(const sr_option *table, void *dst, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || !a[2])
            return sr_error_set("unexpected argument '%s' (options start with --)", a);
        char name[128];
        const char *eq = strchr(a + 2, '=');
        size_t len = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
        if (len >= sizeof name)
            return sr_error_set("unknown option '%s'", a);
        memcpy(name, a + 2, len);
        name[len] = '\0';
        const sr_option *o = option_table_find(table, name);
        if (!o)
            return sr_error_set("unknown option '--%s'", name);
        char origin[140];
        snprintf(origin, sizeof origin, "--%s", name);
        const char *value;
        if (eq) {
            value = eq + 1;
        } else if (o->kind == SR_OPT_BOOL) {
            value = "true";
        } else {
            if (i + 1 >= argc)
                return sr_error_set("--%s needs a value", name);
            value = argv[++i];
        }
        if (option_table_set(table, dst, name, value, origin) != 0)
            return -1;
    }
    return 0;
}

void option_table_print_help(const sr_option *table, FILE *f)
{
    for (const sr_option *o = table; o->name; o++) {
        char head[96];
        const char *arg = o->arg ? o->arg : (o->kind == SR_OPT_CHOICE ? o->choices : "");
        snprintf(head, sizeof head, "--%s%s%s", o->name, *arg ? " " : "", arg);
        fprintf(f, "  %-30s %s\n", head, o->help ? o->help : "");
    }
}

void option_table_free(const sr_option *table, void *dst)
{
    for (const sr_option *o = table; o->name; o++)
        if (o->kind == SR_OPT_STRING || o->kind == SR_OPT_CHOICE) {
            char **p = (char **)((char *)dst + o->offset);
            free(*p);
            *p = NULL;
        }
}
