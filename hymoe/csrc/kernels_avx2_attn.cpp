// AVX2 decode attention (AttendFn, common.h): attend.h over 8-float vectors.
#if defined(__x86_64__) || defined(_M_X64)
#include "attend.h"
#include "vec256.h"
#include "kernels.h"

namespace {

using Vec256 = Vec256T<2>;  // AVX2's 16 registers

// float32 -> fp16 by F16C, rounded to nearest even as f32_to_fp16: the new keys and values a
// decode step writes to an fp16 cache (the scalar conversion was a tenth of its attention)
void to_f16_f16c(const float* x, int n, uint16_t* out) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i*)(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) out[i] = f32_to_fp16(x[i]);
}

}  // namespace

const AttendFn avx2::attend = attend_vec<Vec256>;
const ToF16Fn avx2::to_f16 = to_f16_f16c;
#endif
