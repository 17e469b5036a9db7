// The one translation unit compiled into Tessera's fatbin: every kernel family.
#include "embedding.cu"
