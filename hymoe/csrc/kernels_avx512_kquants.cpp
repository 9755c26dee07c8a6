// AVX512 per-row kernel of IQ4_XS (lowbit.h): its own F struct (rows_avx512.h) against per-32
// activations. (Q2_K and Q3_K take per-256 activations: kernels_avx512_k.cpp's KQ2 / KQ3.)
// Compiled with the AVX512 flags only; no C++ library (common.h).
#if defined(__x86_64__) || defined(_M_X64)
#include "kernels.h"
#include "lowbit_kquants.h"
#include "rows_avx512.h"

namespace {

// IQ4_XS: value = d * (ls - 32) * kIQ4Values[q] per block of 32: codes kIQ4Values[q] + 128 by one
// vpshufb, the offset 128 taken by the activations (kShift 7); the 8 scales of a unit one vector
struct FIQ4_XS {
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 256, kBytes = sizeof(BlockIQ4_XS), kShift = 7;
    static const bool kMins = false, kPrepAhead = false;  // ahead measured slower: 8.3-9.6 -> 6.3-7.0 ms a layer without
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

const RowsFn avx512::rows_iq4_xs = rows_q<FIQ4_XS>;
#endif
