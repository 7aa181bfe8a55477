/* The option table and the configuration file: types, ranges, quoting,
 * comments, errors naming the line, and the command line overriding the
 * file. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "config/config_file.h"
#include "tests/check.h"

typedef struct {
    char *name;
    int n;
    int64_t big;
    int64_t bytes;
    double x;
    bool flag;
    char *mode;
} opts;

static const sr_option table[] = {
    {"name", SR_OPT_STRING, offsetof(opts, name), 0, 0, NULL, "S", "a string"},
    {"n", SR_OPT_INT, offsetof(opts, n), 1, 100, NULL, "N", "an int"},
    {"big", SR_OPT_INT64, offsetof(opts, big), 0, 1e15, NULL, "N", "an int64"},
    {"bytes", SR_OPT_BYTES, offsetof(opts, bytes), 1, 1e13, NULL, "SIZE", "bytes"},
    {"x", SR_OPT_DOUBLE, offsetof(opts, x), 0, 10, NULL, "X", "a double"},
    {"flag", SR_OPT_BOOL, offsetof(opts, flag), 0, 0, NULL, NULL, "a flag"},
    {"mode", SR_OPT_CHOICE, offsetof(opts, mode), 0, 0, "star|ring", NULL, "a choice"},
    {NULL, 0, 0, 0, 0, NULL, NULL, NULL},
};

int main(void)
{
    opts o = {0};
    const char *file = "# comment\n"
                       "\n"
                       "name = \"a b # c\"\n"
                       "n=7   # trailing comment\n"
                       "  big = 123456789012\n"
                       "bytes = 64M\n"
                       "x = 2.5\r\n"
                       "flag = true\n"
                       "mode = ring\n";
    CHECK(config_text_apply(file, "t.conf", table, &o) == 0, "%s", sr_error_get());
    CHECK(o.name && !strcmp(o.name, "a b # c"), "name '%s'", o.name ? o.name : "(null)");
    CHECK(o.n == 7, "n %d", o.n);
    CHECK(o.big == 123456789012LL, "big");
    CHECK(o.bytes == 64LL << 20, "bytes %lld", (long long)o.bytes);
    CHECK(o.x == 2.5, "x %g", o.x);
    CHECK(o.flag, "flag");
    CHECK(o.mode && !strcmp(o.mode, "ring"), "mode");

    char *argv[] = {"--n", "9", "--mode=star", "--flag=false", "--name", "cli"};
    CHECK(option_table_parse_argv(table, &o, 6, argv) == 0, "%s", sr_error_get());
    CHECK(o.n == 9 && !strcmp(o.mode, "star") && !o.flag && !strcmp(o.name, "cli"),
          "command line overrides");
    char *argv2[] = {"--flag"};
    CHECK(option_table_parse_argv(table, &o, 1, argv2) == 0 && o.flag, "bare bool");

    /* errors name the place and the limit */
    CHECK(config_text_apply("n = 1\nn = 500\n", "t.conf", table, &o) != 0, "range");
    CHECK(strstr(sr_error_get(), "t.conf:2") && strstr(sr_error_get(), "[1, 100]"), "%s",
          sr_error_get());
    CHECK(config_text_apply("nope = 1\n", "t.conf", table, &o) != 0 &&
              strstr(sr_error_get(), "unknown option 'nope'"),
          "%s", sr_error_get());
    CHECK(config_text_apply("just words\n", "t.conf", table, &o) != 0, "no '='");
    CHECK(config_text_apply("name = \"open\n", "t.conf", table, &o) != 0, "quote");
    CHECK(config_text_apply("mode = global\n", "t.conf", table, &o) != 0 &&
              strstr(sr_error_get(), "star|ring"),
          "%s", sr_error_get());
    CHECK(config_text_apply("x = nan\n", "t.conf", table, &o) != 0, "nan");
    CHECK(config_text_apply("bytes = 12Q\n", "t.conf", table, &o) != 0, "bad suffix");
    CHECK(config_text_apply("flag = maybe\n", "t.conf", table, &o) != 0, "bool");
    char *argv3[] = {"--n"};
    CHECK(option_table_parse_argv(table, &o, 1, argv3) != 0 &&
              strstr(sr_error_get(), "needs a value"),
          "missing value");
    char *argv4[] = {"positional"};
    CHECK(option_table_parse_argv(table, &o, 1, argv4) != 0, "positional");
    int64_t b;
    CHECK(option_parse_bytes("1.5G", &b) == 0 && b == 3LL << 29, "1.5G");
    CHECK(option_parse_bytes("2KiB", &b) == 0 && b == 2048, "KiB");
    option_table_free(table, &o);
    CHECK(!o.name && !o.mode, "freed");
    return check_finish("config");
}
