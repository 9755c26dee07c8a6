// The codebooks of the iq3 group (lowbit_iq3.h), generated from gguf-py: not written yet.
#pragma once
