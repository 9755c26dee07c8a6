// AVX2 + FMA + F16C kernels (compiled with those flags only; chosen at run time).
#include "common.h"

void fill_avx2(KernelTable* t) { t->name = "avx2"; }
