// Inline helpers shared by the AVX2 kernel files. Include only from files compiled with at least
// the AVX2 flags (see setup.py); everything here has internal linkage.
#pragma once
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

namespace {

// 8 rows x 8 dwords in registers -> out[q] = dword q of rows 0-7 (lane i = row i)
static inline void transpose8x8_epi32(const __m256i* r, __m256i* out) {
    __m256i t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int g = 0; g < 8; g += 4) {
        u[g] = _mm256_unpacklo_epi64(t[g], t[g + 2]);
        u[g + 1] = _mm256_unpackhi_epi64(t[g], t[g + 2]);
        u[g + 2] = _mm256_unpacklo_epi64(t[g + 1], t[g + 3]);
        u[g + 3] = _mm256_unpackhi_epi64(t[g + 1], t[g + 3]);
    }
    // u[c]: 128-bit lanes [rows 0-3 of dword c | of dword c + 4]; u[c + 4]: rows 4-7
    for (int c = 0; c < 4; c++) {
        out[c] = _mm256_permute2x128_si256(u[c], u[c + 4], 0x20);
        out[c + 4] = _mm256_permute2x128_si256(u[c], u[c + 4], 0x31);
    }
}

// TQ1_0: five base-3 digits per byte, digit k of q = floor(3 (q 3^k mod 256) / 256)
static inline __m256i tq1_times9(__m256i v) {  // v * 9 mod 256 per byte
    return _mm256_add_epi8(_mm256_and_si256(_mm256_slli_epi16(v, 3), _mm256_set1_epi8((char)0xF8)), v);
}
static inline __m256i tq1_digit(__m256i q) {  // floor(3q / 256) = (q >= 86) + (q >= 171), as -(-1 + -1)
    const __m256i ge86 = _mm256_cmpeq_epi8(_mm256_max_epu8(q, _mm256_set1_epi8(86)), q);
    const __m256i ge171 = _mm256_cmpeq_epi8(_mm256_max_epu8(q, _mm256_set1_epi8((char)171)), q);
    return _mm256_sub_epi8(_mm256_setzero_si256(), _mm256_add_epi8(ge86, ge171));
}
// the bytes q times 3^k mod 256, k < 5: their digit k is digit 0 of pk[k]
static inline void tq1_powers(__m256i q, __m256i* pk) {
    const __m256i q3 = _mm256_add_epi8(_mm256_add_epi8(q, q), q), q9 = tq1_times9(q);
    pk[0] = q, pk[1] = q3, pk[2] = q9, pk[3] = tq1_times9(q3), pk[4] = tq1_times9(q9);
}
// One TQ1_0 block's bytes times 3^k: pv from qs[0..31]; pw from qs[32..47] with qh[0..3] in bytes
// 16-19 (the rest zero), so the k-th digits of both runs sit in one vector
static inline void tq1_block_powers(const uint8_t* qs, const uint8_t* qh, __m256i* pv, __m256i* pw) {
    int32_t h;
    memcpy(&h, qh, 4);
    tq1_powers(_mm256_loadu_si256((const __m256i*)qs), pv);
    tq1_powers(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)(qs + 32))),
                                       _mm_cvtsi32_si128(h), 1), pw);
}

}  // namespace
