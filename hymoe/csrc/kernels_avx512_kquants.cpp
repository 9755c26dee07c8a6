// AVX512 per-row kernels of Q2_K, Q3_K, IQ4_XS (lowbit.h): a format's own F struct (rows_avx512.h) where one
// is written, else the generic kernel over its decoder. Compiled with the AVX512 flags only; no C++
// library (common.h).
#if defined(__x86_64__) || defined(_M_X64)
#include "kernels.h"
#include "lowbit_kquants.h"
#include "rows_avx512.h"

namespace {

// The scale of each 4-weight lane of chunk c (weights 64c..64c+63) from the 16 scales of a unit's
// blocks of 16: lane l belongs to block 4c + l / 4
inline __m512 lanes16_from(__m512 table, int c) {
    const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(4 * c),
                                         _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0));
    return _mm512_permutexvar_ps(idx, table);
}

// Q2_K and Q3_K's 2-bit planes: chunk c is half c / 2 of the unit (qs[32h..32h+31]), its weights
// 0-31 at bits 4(c % 2), weights 32-63 at bits 4(c % 2) + 2; one broadcast, one shift, one mask
inline __m512i k_low2_chunk(const uint8_t* qs, int c) {
    const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(qs + 32 * (c / 2))));
    const __m512i shift = _mm512_inserti64x4(_mm512_set1_epi64(4 * (c % 2)), _mm256_set1_epi64x(4 * (c % 2) + 2), 1);
    return _mm512_and_si512(_mm512_srlv_epi64(v, shift), _mm512_set1_epi8(3));
}

// Q2_K: value = d * (sc & 15) * q - dmin * (sc >> 4) per block of 16, the 2-bit q as codes; the 16
// scales and mins of a unit are one vector each, its mins go against the per-16 sums (kMins16)
struct FQ2_K {
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 256, kBytes = sizeof(BlockQ2_K), kShift = -1;
    static const bool kMins = false, kMins16 = true, kPrepAhead = true;
    const uint8_t* qs;
    __m512 sc16, mn16;
    void prep(const uint8_t* p) {
        const BlockQ2_K* b = (const BlockQ2_K*)p;
        qs = b->qs;
        // scale and min by table: d x [0..15] and dmin x [0..15] indexed by the nibbles (vpermps
        // takes an index's low 4 bits: no mask, no conversion of the 16 bytes)
        const __m512i s = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)b->scales));
        const __m512 ramp = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        sc16 = _mm512_permutexvar_ps(s, _mm512_mul_ps(ramp, _mm512_set1_ps(h2f(b->d))));
        mn16 = _mm512_permutexvar_ps(_mm512_srli_epi32(s, 4), _mm512_mul_ps(ramp, _mm512_set1_ps(h2f(b->dmin))));
    }
    __m512i chunk(int c, __m512& s) const {
        s = lanes16_from(sc16, c);
        return k_low2_chunk(qs, c);
    }
    __m256 mins() const { return _mm256_setzero_ps(); }
    __m512 mins16() const { return mn16; }
};

// Q3_K: value = d * (sc - 32) * (q - 4), q the 2-bit plane | the hmask bit << 2: codes q with the
// offset 4 taken by the activations (kShift 2). Weights 32j..32j+31 hold bit j of hmask[0..31]: a
// 64-bit rotate by 2 - j puts it at bit 2 of the same byte, whatever j.
struct FQ3_K {
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 256, kBytes = sizeof(BlockQ3_K), kShift = 2;
    static const bool kMins = false, kPrepAhead = true;
    const BlockQ3_K* b;
    __m512 sc16;
    void prep(const uint8_t* p) {
        b = (const BlockQ3_K*)p;
        // the 12 scale bytes (masked: the block may end the buffer 2 bytes later) to 16 bytes: low
        // nibbles of bytes 0-7 then their high ones, | 2 bits of byte 8 + j % 4 at 2 (j / 4) (a dword
        // shift per group of 4: what comes in from the next byte is masked off), minus 32
        const __m128i x = _mm_maskz_loadu_epi8(0x0FFF, b->scales);
        const __m128i m4 = _mm_set1_epi8(0x0F);
        const __m128i lo = _mm_unpacklo_epi64(_mm_and_si128(x, m4), _mm_and_si128(_mm_srli_epi16(x, 4), m4));
        const __m128i hb = _mm_srlv_epi32(_mm_shuffle_epi8(x, _mm_set1_epi32(0x0B0A0908)), _mm_setr_epi32(0, 2, 4, 6));
        const __m128i sb = _mm_or_si128(lo, _mm_slli_epi16(_mm_and_si128(hb, _mm_set1_epi8(3)), 4));
        const __m512i s = _mm512_cvtepi8_epi32(_mm_sub_epi8(sb, _mm_set1_epi8(32)));
        sc16 = _mm512_mul_ps(_mm512_set1_ps(h2f(b->d)), _mm512_cvtepi32_ps(s));
    }
    __m512i chunk(int c, __m512& s) const {
        s = lanes16_from(sc16, c);
        const __m512i hm = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)b->hmask));
        const __m512i rot = _mm512_inserti64x4(_mm512_set1_epi64((66 - 2 * c) % 64), _mm256_set1_epi64x((65 - 2 * c) % 64), 1);
        // low2 | (rotated & 4): one ternary logic op (0xF8: A | (B & C))
        return _mm512_ternarylogic_epi32(k_low2_chunk(b->qs, c), _mm512_rolv_epi64(hm, rot), _mm512_set1_epi8(4), 0xF8);
    }
    __m256 mins() const { return _mm256_setzero_ps(); }
};

// IQ4_XS: value = d * (ls - 32) * kIQ4Values[q] per block of 32: codes kIQ4Values[q] + 128 by one
// vpshufb, the offset 128 taken by the activations (kShift 7); the 8 scales of a unit one vector
struct FIQ4_XS {
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 256, kBytes = sizeof(BlockIQ4_XS), kShift = 7;
    static const bool kMins = false, kPrepAhead = true;
    const uint8_t* qs;
    __m512 d8;  // lanes 0-7: the 8 blocks' scales
    void prep(const uint8_t* p) {
        const BlockIQ4_XS* b = (const BlockIQ4_XS*)p;
        qs = b->qs;
        // block j: nibble j of scales_l (a dword) | 2 bits j of scales_h << 4, minus 32
        const __m256i sl = _mm256_srlv_epi32(_mm256_set1_epi32(*(const int*)b->scales_l),
                                             _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
        const __m256i sh = _mm256_srlv_epi32(_mm256_set1_epi32(b->scales_h), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
        const __m256i s = _mm256_or_si256(_mm256_and_si256(sl, _mm256_set1_epi32(0xF)),
                                          _mm256_slli_epi32(_mm256_and_si256(sh, _mm256_set1_epi32(3)), 4));
        d8 = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_set1_ps(h2f(b->d)),
                                                  _mm256_cvtepi32_ps(_mm256_sub_epi32(s, _mm256_set1_epi32(32)))));
    }
    __m512i chunk(int c, __m512& s) const {
        s = lanes_from(d8, 2 * c, 2 * c + 1);
        const __m512i lut = _mm512_broadcast_i32x4(_mm_xor_si128(_mm_loadu_si128((const __m128i*)kIQ4Values),
                                                                 _mm_set1_epi8((char)0x80)));
        const __m512i shift = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);  // 128-bit lanes [lo0 hi0 lo1 hi1]
        const __m512i v = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(qs + 32 * c)))),
            _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(qs + 32 * c + 16))), 1);
        return _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srlv_epi64(v, shift), _mm512_set1_epi8(0x0F)));
    }
    __m256 mins() const { return _mm256_setzero_ps(); }
};

}  // namespace

const RowsFn avx512::rows_q2_k = rows_q<FQ2_K>;
const RowsFn avx512::rows_q3_k = rows_q<FQ3_K>;
const RowsFn avx512::rows_iq4_xs = rows_q<FIQ4_XS>;
#endif
