/* Table-driven options: one table names each option once, with its type,
 * range and help, and serves both the command line (--name VALUE or
 * --name=VALUE) and the configuration file (name = value), so the two can
 * never disagree. Values are stored into a caller's struct at the given
 * offsets; strings are malloc'd copies freed by option_table_free(). */
#ifndef SR_CONFIG_OPTION_TABLE_H
#define SR_CONFIG_OPTION_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
    SR_OPT_STRING,   /* char * */
    SR_OPT_INT,      /* int, within [min, max] */
    SR_OPT_INT64,    /* int64_t, within [min, max] */
    SR_OPT_BYTES,    /* int64_t; a number with an optional K/M/G/T suffix (powers of 1024) */
    SR_OPT_DOUBLE,   /* double, finite, within [min, max] */
    SR_OPT_BOOL,     /* bool; bare --name means true; files say true/false */
    SR_OPT_CHOICE,   /* char *, one of the '|'-separated words in `choices` */
} sr_opt_kind;

typedef struct {
    const char *name;     /* without dashes; NULL ends the table */
    sr_opt_kind kind;
    size_t offset;        /* into the destination struct */
    double min, max;      /* numeric kinds */
    const char *choices;  /* SR_OPT_CHOICE */
    const char *arg;      /* placeholder in the help, e.g. "DIR" */
    const char *help;
} sr_option;

const sr_option *option_table_find(const sr_option *table, const char *name);
/* Sets one option from its text. `origin` ("--name", "file:12") starts
 * the error message, which names the accepted range. */
int option_table_set(const sr_option *table, void *dst, const char *name, const char *value,
                     const char *origin);
/* Parses argv[0..argc) as options only (no positional arguments). */
int option_table_parse_argv(const sr_option *table, void *dst, int argc, char **argv);
void option_table_print_help(const sr_option *table, FILE *f);
/* Frees the string fields (and sets them to NULL). */
void option_table_free(const sr_option *table, void *dst);
/* Parses "64M", "2G", "123" into bytes. */
int option_parse_bytes(const char *s, int64_t *out);

#endif
