// AVX512 per-row kernels of Q4_1, Q5_0, Q5_1, IQ4_NL (lowbit.h): a format's own F struct (rows_avx512.h) where one
// is written, else the generic kernel over its decoder. Compiled with the AVX512 flags only; no C++
// library (common.h).
#if defined(__x86_64__) || defined(_M_X64)
#include "kernels.h"
#include "lowbit_legacy.h"
#include "rows_avx512.h"

namespace {

// Q4_1: Q4_0's nibbles with a min per block (value = d * q + m), 8 blocks per unit so the mins
// of a unit are one vector
struct FQ4_1 {
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 256, kBytes = 8 * sizeof(BlockQ4_1), kShift = -1;
    static const bool kMins = true, kPrepAhead = false;
    const BlockQ4_1* b;
    __m512 d8;  // lanes 0-7: the 8 blocks' scales
    __m256 m8;  // minus their mins
    void prep(const uint8_t* p) {
        b = (const BlockQ4_1*)p;
        // d and m of each block are one dword, 20 bytes apart: gather the 8 dwords, split the halves
        const __m256i dm = _mm256_i32gather_epi32((const int*)p, _mm256_setr_epi32(0, 5, 10, 15, 20, 25, 30, 35), 4);
        d8 = _mm512_castps256_ps512(_mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_and_si256(dm, _mm256_set1_epi32(0xFFFF)))));
        m8 = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_srli_epi32(dm, 16))));
    }
    __m512i chunk(int c, __m512& s) const {
        s = lanes_from(d8, 2 * c, 2 * c + 1);
        const __m512i shift = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);  // 128-bit lanes [lo0 hi0 lo1 hi1]
        __m512i v = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)b[2 * c].qs))),
            _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)b[2 * c + 1].qs)), 1);
        return _mm512_and_si512(_mm512_srlv_epi64(v, shift), _mm512_set1_epi8(0x0F));
    }
    __m256 mins() const { return m8; }
};

}  // namespace

const RowsFn avx512::rows_q4_1 = rows_q<FQ4_1>;
const RowsFn avx512::rows_q5_0 = lowbit_rows<DQ5_0>();
const RowsFn avx512::rows_q5_1 = lowbit_rows<DQ5_1>();
const RowsFn avx512::rows_iq4_nl = lowbit_rows<DIQ4_NL>();
#endif
