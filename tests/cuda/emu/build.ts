/**
 * Builds the kernel emulator: Tessera's CUDA kernels, every family, compiled for the CPU with the
 * C++ compiler against cuda_emu.h (as sm_90a device code, so the Hopper kernels are in), plus
 * the runtime, as one shared library that the stand-in libcuda runs launches on (MOCK_EMU). See
 * README.md in this folder.
 *
 * The kernel sources are used as they are, with mechanical changes made in a copy: mma.cuh and
 * sm90.cuh are replaced by this folder's (the same functions over the emulated collectives,
 * barriers and copies, since inline PTX cannot run on the CPU), the inline PTX statements left
 * in the kernels (fences, register hand-offs, launch-dependency control, prefetches) become
 * no-ops (rewriteInlinePtx), and the `__shared__` declarations are rewritten onto the emulator's
 * shared window (rewriteShared). The library is cached by a hash of every input, so the test
 * files that use it build it once.
 *
 * With the race check (`racecheck`, or TESSERA_EMU_RACECHECK=1 for the library the test files
 * pick up), the kernels are compiled with -fsanitize=thread for its instrumentation alone: every
 * load and store calls the runtime, which checks those in shared memory against the order the
 * kernels' barriers give (race.h). No ThreadSanitizer runtime is linked.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const HERE = import.meta.dirname;
const KERNELS = path.resolve(HERE, '../../../kernels');
const CXX = process.env.CXX ?? 'g++';
// The kernels are compiled as sm_90a device code (their Hopper paths included).
const FLAGS = ['-std=c++17', '-O2', '-g0', '-fPIC', '-mpopcnt', '-D__CUDA_ARCH__=900', '-D__CUDA_ARCH_FEAT_SM90_ALL', '-Wall', '-Wno-unknown-pragmas', '-Wno-unused-function', '-Wno-unused-variable', '-Wno-unused-but-set-variable', '-fno-strict-aliasing', '-fsanitize=alignment', '-fsanitize-undefined-trap-on-error'];

/** The kernel families: tessera.cu's includes. */
function families(): string[] {
  const unit = readFileSync(path.join(KERNELS, 'tessera.cu'), 'utf8');
  return [...unit.matchAll(/#include "(\w+\.cu)"/g)].map((m) => m[1]);
}

/**
 * The kernels' own inline PTX outside sm90.cuh and mma.cuh, which the emulator has no use for:
 * the mbarrier-init fence and setmaxnreg (Hopper kernels), and common.cuh's programmatic
 * dependent launch (griddepcontrol: the emulator runs one launch after another, so each kernel
 * has finished before the next starts) and L2 prefetch hints.
 */
export function rewriteInlinePtx(source: string): string {
  return source.replace(/asm volatile\("(?:fence\.mbarrier_init|setmaxnreg|griddepcontrol\.|prefetch\.global\.L2 )[^"]*"[^;]*;/g, '((void)0); /* emulator: nothing to do */');
}

/**
 * The kernel sources' shared-memory declarations, rewritten onto the emulator's shared window:
 * `extern __shared__ [__align__(n)] T name[];` becomes a pointer to the dynamic part, and
 * `__shared__ [__align__(n)] T name[dims];` a reference to a static slot the runtime gives that
 * declaration for the launch (the same for every thread of every block; each template
 * instantiation has its own id, kept in a function-local static). A declaration of
 * another form is left as it is, and cuda_emu.h makes `__shared__` a compile error there.
 */
export function rewriteShared(source: string): string {
  let n = 0;
  return source
    .replace(/extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w:<> ]+?)\s+(\w+)\s*\[\s*\]\s*;/g, (_m, type: string, name: string) => `${type}* const ${name} = reinterpret_cast<${type}*>(::emu::dyn_smem);`)
    .replace(/__shared__\s+(?:__align__\((\d+)\)\s+)?([\w:<>, ]+?)\s+(\w+)((?:\s*\[[^\]]+\])*)\s*;/g, (_m, align: string | undefined, type: string, name: string, dims: string) => {
      const id = `emu_shared_id_${n++}`;
      const slot = `::emu::static_shared(${id}, sizeof(${type}${dims}), ${align ?? 1} > alignof(${type}) ? ${align ?? 1} : alignof(${type}))`;
      return `static const int ${id} = ::emu::new_shared_id(); ` + (dims ? `auto& ${name} = *reinterpret_cast<${type}(*)${dims}>(${slot});` : `${type}& ${name} = *reinterpret_cast<${type}*>(${slot});`);
    });
}

/** The race check's flags: the instrumentation for the kernels, the define for both units. */
// -fno-threadsafe-statics: launches run under the runtime's lock, so the static initialisers in
// kernels (shared-memory ids) need no guard, whose atomic loads the instrumentation would hook.
const RACE_KERNEL_FLAGS = ['-fsanitize=thread', '--param', 'tsan-instrument-func-entry-exit=0', '-fno-threadsafe-statics', '-DEMU_RACECHECK=1'];
const RACE_RUNTIME_FLAGS = ['-DEMU_RACECHECK=1'];

export interface EmulatorBuild {
  /** The shared library, or null with the reason in `skip`. */
  path: string | null;
  skip: string | null;
  /** The kernels it holds (Tessera's, and its own ts_emu_selftest_* checks). */
  kernels: string[];
}

const cache = new Map<boolean, EmulatorBuild>();

/** The emulator library; with `racecheck` (default: TESSERA_EMU_RACECHECK=1) the race-checking one. */
export function buildEmulator(options: { racecheck?: boolean } = {}): EmulatorBuild {
  const racecheck = options.racecheck ?? process.env.TESSERA_EMU_RACECHECK === '1';
  const hit = cache.get(racecheck);
  if (hit) return hit;
  const done = (b: EmulatorBuild): EmulatorBuild => (cache.set(racecheck, b), b);
  const none = (skip: string): EmulatorBuild => done({ path: null, skip, kernels: [] });
  if (process.platform !== 'linux' || process.arch !== 'x64') return none(`the kernel emulator runs on x86-64 Linux (this is ${process.platform}/${process.arch})`);
  const version = spawnSync(CXX, ['--version'], { encoding: 'utf8' });
  if (version.error || version.status !== 0) return none(`no C++ compiler (${CXX}) to build the kernel emulator`);

  const units = families();
  const sources = new Map<string, string>();
  for (const f of readdirSync(KERNELS)) if (/\.(cu|cuh)$/.test(f)) sources.set(f, readFileSync(path.join(KERNELS, f), 'utf8'));
  const emuFiles = ['cuda_emu.h', 'mma.cuh', 'sm90.cuh', 'include/cuda.h', 'runtime.cpp', 'race.h', 'race_check.h', 'include/emu_half_types.h', 'include/cuda_bf16.h', 'include/cuda_fp16.h', 'registry.h', 'selftest.cu'];
  const hash = createHash('sha256');
  hash.update(version.stdout).update(FLAGS.join(' ')).update(units.join(',')).update(racecheck ? RACE_KERNEL_FLAGS.join(' ') : '');
  for (const [f, s] of [...sources].sort()) hash.update(f).update(s);
  for (const f of emuFiles) hash.update(f).update(readFileSync(path.join(HERE, f)));
  hash.update(readFileSync(import.meta.filename));
  const key = hash.digest('hex').slice(0, 16);
  const dir = path.join(tmpdir(), `tessera-emu-${key}`);
  const lib = path.join(dir, 'libtessera_emu.so');
  const list = path.join(dir, 'kernels.txt');
  if (existsSync(lib) && existsSync(list)) return done({ path: lib, skip: null, kernels: readFileSync(list, 'utf8').split('\n').filter(Boolean) });

  const work = mkdtempSync(path.join(tmpdir(), 'tessera-emu-build-'));
  try {
    const src = path.join(work, 'src');
    mkdirSync(src);
    for (const [f, s] of sources) {
      if (f === 'mma.cuh' || f === 'sm90.cuh') copyFileSync(path.join(HERE, f), path.join(src, f));
      else writeFileSync(path.join(src, f), rewriteShared(rewriteInlinePtx(s)));
    }
    // The emulator's own check kernels (selftest.cu) go in after Tessera's.
    writeFileSync(path.join(src, 'emu_selftest.cu'), rewriteShared(readFileSync(path.join(HERE, 'selftest.cu'), 'utf8')));
    const include = ['-include', path.join(HERE, 'cuda_emu.h'), '-I', path.join(HERE, 'include'), '-I', src];
    const all = path.join(src, 'emu_kernels.cpp');
    writeFileSync(all, [...units, 'emu_selftest.cu'].map((u) => `#include "${u}"\n`).join(''));
    // The entries, from the preprocessed source (they are declared through macros).
    const pre = execFileSync(CXX, [...FLAGS, ...include, '-x', 'c++', '-E', '-P', all], { encoding: 'utf8', maxBuffer: 256 << 20 });
    const kernels = [...new Set([...pre.matchAll(/extern\s+"C"\s+void\s+(ts_\w+)\s*\(/g)].map((m) => m[1]))].sort();
    if (kernels.length === 0) throw new Error('no kernel entries found in the preprocessed sources');
    const registry =
      `#include "emu_kernels.cpp"\n#include "${path.join(HERE, 'registry.h')}"\n` +
      `const emu::Entry emu::ENTRIES[] = {\n${kernels.map((k) => `  EMU_ENTRY(${k}),\n`).join('')}};\n` +
      `const int emu::N_ENTRIES = ${kernels.length};\n`;
    writeFileSync(path.join(src, 'registry.cpp'), registry);
    const objs: string[] = [];
    for (const [name, file, extra] of [
      ['registry', path.join(src, 'registry.cpp'), racecheck ? RACE_KERNEL_FLAGS : []],
      ['runtime', path.join(HERE, 'runtime.cpp'), racecheck ? RACE_RUNTIME_FLAGS : []],
    ] as const) {
      const obj = path.join(work, `${name}.o`);
      const r = spawnSync(CXX, [...FLAGS, ...extra, ...include, '-x', 'c++', '-c', file, '-o', obj], { encoding: 'utf8', maxBuffer: 64 << 20 });
      if (r.status !== 0) throw new Error(`${CXX} failed on ${name}:\n${r.stderr.slice(0, 20000)}`);
      objs.push(obj);
    }
    const out = path.join(work, 'libtessera_emu.so');
    // -z defs: a hook the instrumentation calls that the runtime lacks fails here, not at load.
    execFileSync(CXX, ['-shared', ...(racecheck ? ['-Wl,-z,defs'] : []), '-o', out, ...objs, '-lpthread'], { stdio: 'pipe' });
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(work, 'kernels.txt'), kernels.join('\n') + '\n');
    // Rename into place: a concurrent build of the same key leaves one complete copy.
    renameSync(out, lib);
    renameSync(path.join(work, 'kernels.txt'), list);
    return done({ path: lib, skip: null, kernels });
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
