// Q4_K / Q5_K scale unpacking shared by the AVX512 and AVX2 kernels (SSE/AVX2 intrinsics only, so
// any file compiled with at least the AVX2 flags may include it). Internal linkage; no C++ library.
#pragma once
#include <immintrin.h>
#include <string.h>

#include "common.h"

namespace {

struct KQ45Scales {  // Q4_K / Q5_K: eight 6-bit scales and mins as int16
    __m128i sc, mn;
    float d, dmin;
    void load(const uint8_t* p) {
        uint32_t dd;  // d and dmin, both fp16: one conversion
        memcpy(&dd, p, 4);
        const __m128 both = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dd));
        // dwords A, B, C of the 12 scale bytes (the 4 bytes after them belong to the block too):
        // scales = [A & 63 | (C & 15) + (A >> 6 << 4)], mins = [B & 63 | (C >> 4) + (B >> 6 << 4)],
        // per byte; in vector registers, so no scalar stores feed a vector load
        const __m128i v = _mm_loadu_si128((const __m128i*)(p + 4));
        const __m128i lo = _mm_and_si128(v, _mm_set1_epi8(63));                                  // [A', B']
        const __m128i c = _mm_srlv_epi32(_mm_shuffle_epi32(v, 0xAA), _mm_set_epi32(0, 0, 4, 0));  // [C, C>>4]
        const __m128i hi = _mm_or_si128(_mm_and_si128(c, _mm_set1_epi8(15)),
                                        _mm_and_si128(_mm_srli_epi32(v, 2), _mm_set1_epi8(0x30)));
        const __m128i b = _mm_unpacklo_epi32(lo, hi);  // 8 scales, then 8 mins
        sc = _mm_cvtepu8_epi16(b);
        mn = _mm_cvtepu8_epi16(_mm_srli_si128(b, 8));
        d = _mm_cvtss_f32(both);
        dmin = _mm_cvtss_f32(_mm_movehdup_ps(both));
    }
};

}  // namespace
