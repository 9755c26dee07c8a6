// The codebooks of the iq2 group (lowbit_iq2.h), generated from gguf-py: not written yet.
#pragma once
