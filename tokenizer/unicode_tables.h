/* Unicode data for the normalizers, generated into unicode_tables.c by
 * gen_unicode_tables.py. All arrays are sorted by code point. */
#ifndef SR_TOKENIZER_UNICODE_TABLES_H
#define SR_TOKENIZER_UNICODE_TABLES_H

#include <stdint.h>

typedef struct {
    uint32_t first, last;
    uint8_t ccc;
} sr_uni_ccc_range;

/* A code point and its mapping: `len` code points at `off` in the pool. */
typedef struct {
    uint32_t cp;
    uint32_t off;
    uint32_t len;
} sr_uni_map_entry;

typedef struct {
    uint32_t a, b, composite;
} sr_uni_pair;

extern const sr_uni_ccc_range sr_uni_ccc[];
extern const int sr_uni_ccc_count;

extern const sr_uni_map_entry sr_uni_nfd_entries[];
extern const int sr_uni_nfd_count;
extern const uint32_t *const sr_uni_nfd_data;

extern const sr_uni_map_entry sr_uni_nfkd_entries[];
extern const int sr_uni_nfkd_count;
extern const uint32_t *const sr_uni_nfkd_data;

extern const sr_uni_map_entry sr_uni_lower_entries[];
extern const int sr_uni_lower_count;
extern const uint32_t *const sr_uni_lower_data;

extern const sr_uni_pair sr_uni_comp[];
extern const int sr_uni_comp_count;

#endif
