/* SPDX-License-Identifier: MIT */
/*
 * Large inputs from small ones, for the targets whose code only branches past 64 KiB (the
 * sink's 64 KiB probe prefix, the DICOM probe's 4 KiB file windows and 1 MiB read limit) while
 * scripts/fuzz caps every input at 64 KiB (-max_len): the first "%FILL" of an input, then K (two
 * bytes, big-endian), L (one byte) and L bytes of a unit, stand for K KiB (at most 4 MiB) of
 * that unit repeated, or of zeros when L is 0. A seed that puts it inside a DICOM value whose
 * length says K KiB is a valid 200 KiB instance in a few hundred bytes, and one whose unit is an
 * element makes a header of thousands of them; the fuzzer mutates their structure, not their
 * bulk. Header-only and static: each target that includes it is its own program (or C test).
 */
#ifndef HC_FUZZ_FILL_H
#define HC_FUZZ_FILL_H

#include <stdlib.h>
#include <string.h>

#define HC_FUZZ_FILL_MARK "%FILL"
#define HC_FUZZ_FILL_MAX_KIB 4096

/* The input with its first fill expanded, in a new buffer of exactly *out_len bytes (the
 * caller's: free it; exact, so that ASan sees a read one byte too far). Without a whole fill
 * (the mark, K, L and the unit), a copy. */
static unsigned char *hc_fuzz_fill(const unsigned char *data, size_t size, size_t *out_len)
{
    static const char mark[] = HC_FUZZ_FILL_MARK;
    const size_t ml = sizeof mark - 1;
    size_t at = size, skip = 0, fill = 0, unit = 0, i, rest;
    unsigned char *out;
    for (i = 0; i + ml + 3 <= size; i++)
        if (memcmp(data + i, mark, ml) == 0 && i + ml + 3 + data[i + ml + 2] <= size) {
            at = i;
            fill = (size_t)(data[i + ml] << 8 | data[i + ml + 1]) * 1024;
            if (fill > (size_t)HC_FUZZ_FILL_MAX_KIB * 1024)
                fill = (size_t)HC_FUZZ_FILL_MAX_KIB * 1024;
            unit = data[i + ml + 2];
            skip = ml + 3 + unit;
            break;
        }
    rest = at < size ? size - at - skip : 0;
    *out_len = (at < size ? at : size) + fill + rest;
    out = malloc(*out_len > 0 ? *out_len : 1);
    if (out == NULL)
        abort();
    memcpy(out, data, at < size ? at : size);
    if (at < size) {
        size_t done = unit < fill ? unit : fill;
        if (unit == 0)
            memset(out + at, 0, fill);
        else
            memcpy(out + at, data + at + ml + 3, done);
        while (unit > 0 && done < fill) { /* the unit, doubled until it fills */
            size_t n = done < fill - done ? done : fill - done;
            memcpy(out + at + done, out + at, n);
            done += n;
        }
        memcpy(out + at + fill, data + at + skip, rest);
    }
    return out;
}

#endif
