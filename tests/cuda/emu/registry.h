// The emulator's kernel table and emu_launch, the entry the stand-in libcuda calls. Included by
// the generated registry.cpp after every kernel source, so EMU_ENTRY(name) sees each kernel's
// C++ signature and unpacks the launch's argument bytes by it (the layout cuLaunchKernel's
// CU_LAUNCH_PARAM_BUFFER_POINTER uses: each parameter at its natural alignment).
#pragma once
#include <stdio.h>
#include <string.h>
#include <tuple>

namespace emu {

// Limits (cuda_emu.h): the dynamic shared bytes this function may use (48 KiB unless raised
// through its attribute), and the most a block may have in all.
int launch_grid(const char* kernel, dim3 grid, dim3 block, dim3 cluster, size_t dyn_bytes, Limits limits, void (*body)(const void*), const void* ctx, char* err, size_t err_len);

template <class T>
inline T take(const unsigned char* buf, size_t& off) {
  off = (off + alignof(T) - 1) & ~(alignof(T) - 1);
  T v;
  memcpy(&v, buf + off, sizeof(T));
  off += sizeof(T);
  return v;
}
template <class... A>
inline size_t args_size(void (*)(A...)) {
  size_t off = 0;
  ((off = ((off + alignof(A) - 1) & ~(alignof(A) - 1)) + sizeof(A)), ...);
  return off;
}
template <class... A>
struct Invoke {
  void (*f)(A...);
  const unsigned char* args;
  static void body(const void* self) {
    const Invoke& me = *static_cast<const Invoke*>(self);
    size_t off = 0;
    std::tuple<A...> t{take<A>(me.args, off)...};  // braced: evaluated left to right
    std::apply(me.f, t);
  }
};
struct Entry {
  const char* name;
  size_t args_size;
  int (*launch)(const char* name, dim3 grid, dim3 block, dim3 cluster, size_t smem, Limits limits, const unsigned char* args, char* err, size_t err_len);
};
template <class... A>
inline int launch_as(void (*f)(A...), const char* name, dim3 grid, dim3 block, dim3 cluster, size_t smem, Limits limits, const unsigned char* args, char* err, size_t err_len) {
  const Invoke<A...> inv{f, args};
  return launch_grid(name, grid, block, cluster, smem, limits, &Invoke<A...>::body, &inv, err, err_len);
}
extern const Entry ENTRIES[];
extern const int N_ENTRIES;

}  // namespace emu

#define EMU_ENTRY(k) \
  { #k, ::emu::args_size(&k), [](const char* n, dim3 g, dim3 b, dim3 c, size_t s, ::emu::Limits lim, const unsigned char* a, char* e, size_t el) { return ::emu::launch_as(&k, n, g, b, c, s, lim, a, e, el); } }

// geom: grid x, y, z, block x, y, z, dynamic shared bytes, the dynamic bytes the function may use,
// the shared bytes a block may have in all, cluster x, y, z (1, 1, 1 without clusters). Returns 0,
// or -1 with a sentence in err.
extern "C" __attribute__((visibility("default"))) int emu_launch(const char* name, const unsigned* geom, const void* args, size_t args_size, char* err, size_t err_len) {
  for (int i = 0; i < emu::N_ENTRIES; i++) {
    const emu::Entry& e = emu::ENTRIES[i];
    if (strcmp(e.name, name) != 0) continue;
    if (args_size != e.args_size) {
      snprintf(err, err_len, "%s: the launch passed %zu bytes of arguments; the kernel takes %zu", name, args_size, e.args_size);
      return -1;
    }
    return e.launch(name, dim3{geom[0], geom[1], geom[2]}, dim3{geom[3], geom[4], geom[5]}, dim3{geom[9], geom[10], geom[11]}, geom[6], emu::Limits{geom[7], geom[8]}, static_cast<const unsigned char*>(args), err, err_len);
  }
  snprintf(err, err_len, "%s: not a kernel the emulator has (it holds the entries of kernels/tessera.cu and its own self-checks)", name);
  return -1;
}

extern "C" __attribute__((visibility("default"))) int emu_kernel_count(void) { return emu::N_ENTRIES; }
