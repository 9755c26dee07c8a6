// AVX512 per-row kernels of IQ3_XXS, IQ3_S, IQ1_M (lowbit.h): a format's own F struct (rows_avx512.h) where one
// is written, else the generic kernel over its decoder. Compiled with the AVX512 flags only; no C++
// library (common.h).
#if defined(__x86_64__) || defined(_M_X64)
#include "kernels.h"
#include "lowbit_iq3.h"
#include "rows_avx512.h"

namespace {

}  // namespace

const RowsFn avx512::rows_iq3_xxs = lowbit_rows<DIQ3_XXS>();
const RowsFn avx512::rows_iq3_s = lowbit_rows<DIQ3_S>();
const RowsFn avx512::rows_iq1_m = lowbit_rows<DIQ1_M>();
#endif
