// AVX512 per-row kernels of IQ2_XXS, IQ2_XS, IQ2_S (lowbit.h): a format's own F struct (rows_avx512.h) where one
// is written, else the generic kernel over its decoder. Compiled with the AVX512 flags only; no C++
// library (common.h).
#if defined(__x86_64__) || defined(_M_X64)
#include "kernels.h"
#include "lowbit_iq2.h"
#include "rows_avx512.h"

namespace {

}  // namespace

const RowsFn avx512::rows_iq2_xxs = lowbit_rows<DIQ2_XXS>();
const RowsFn avx512::rows_iq2_xs = lowbit_rows<DIQ2_XS>();
const RowsFn avx512::rows_iq2_s = lowbit_rows<DIQ2_S>();
#endif
