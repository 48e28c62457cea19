// A CPU stand-in for libnvrtc.so: "compiles" a kernel source by handing it to the host C++ compiler with the
// emulator's prelude (kernel-prelude.h), and returns the shared object as the image, for both the cubin
// and the PTX. Images are cached by source and options, since a build asks for each twice.

#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Program {
  std::string source, name, log;
  std::vector<unsigned char> image;
};

std::string here() {
  Dl_info info;
  dladdr(reinterpret_cast<void*>(&here), &info);
  std::string p = info.dli_fname;
  return p.substr(0, p.rfind('/'));
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

uint64_t fnv1a(const std::string& s, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

/** An invoker and a signature for every kernel of the preprocessed source (extern "C", marked by __global__). */
std::string registrations(const std::string& preprocessed) {
  static const std::regex kernel(R"(extern\s+"C"\s+__attribute__\s*\(\(used\)\)\s+void\s+([A-Za-z_]\w*)\s*\()");
  std::set<std::string> names;
  for (auto it = std::sregex_iterator(preprocessed.begin(), preprocessed.end(), kernel); it != std::sregex_iterator(); ++it)
    names.insert((*it)[1]);
  std::string out = "\n// cuda-emu registrations\n";
  for (const auto& n : names) {
    out += "extern \"C\" void __emu_invoke_" + n + "(void** p) { ::emu::invoke(&" + n + ", p); }\n";
    out += "extern \"C\" ::emu::Signature __emu_signature_" + n + "() { return ::emu::signature(&" + n + "); }\n";
  }
  return out;
}

/** Runs a shell command, appending what it prints to `log`; its exit status. */
int run(const std::string& cmd, std::string& log) {
  FILE* pipe = popen((cmd + " 2>&1").c_str(), "r");
  if (!pipe) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) log.append(buf, n);
  return pclose(pipe);
}

}  // namespace

extern "C" {

int nvrtcVersion(int* major, int* minor) {
  *major = 13;
  *minor = 0;
  return 0;
}

const char* nvrtcGetErrorString(int result) {
  switch (result) {
    case 0: return "NVRTC_SUCCESS";
    case 3: return "NVRTC_ERROR_INVALID_INPUT";
    case 6: return "NVRTC_ERROR_COMPILATION";
    default: return "NVRTC_ERROR_INTERNAL_ERROR";
  }
}

int nvrtcCreateProgram(void** prog, const char* src, const char* name, int, void*, void*) {
  *prog = new Program{src, name ? name : "kernel.cu", "", {}};
  return 0;
}

int nvrtcDestroyProgram(void** prog) {
  delete static_cast<Program*>(*prog);
  *prog = nullptr;
  return 0;
}

int nvrtcCompileProgram(void* prog, int numOptions, const char** options) {
  auto* p = static_cast<Program*>(prog);
  const std::string dir = here();
  std::string flags;
  for (int i = 0; i < numOptions; i++) {
    const std::string o = options[i];
    if (o.rfind("-I", 0) == 0 || o.rfind("-D", 0) == 0) flags += " " + quote(o);
  }
  const std::string cxx = std::getenv("KILN_CUDA_EMU_CXX") ? std::getenv("KILN_CUDA_EMU_CXX") : "g++";
  const std::string prelude = read_file(dir + "/kernel-prelude.h") + read_file(dir + "/emu.h");
  const uint64_t key = fnv1a(p->source + "\n" + flags + "\n" + prelude + cxx);
  const char* tmp = std::getenv("TMPDIR");
  const std::string cache = std::string(tmp ? tmp : "/tmp") + "/kiln-cuda-emu-" + std::to_string(getuid());
  mkdir(cache.c_str(), 0700);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", (unsigned long long)key);
  const std::string so = cache + "/" + hex + ".so";
  if (access(so.c_str(), R_OK) != 0) {
    // Written to a private name first, then renamed: concurrent test processes may compile the same source.
    const std::string stem = cache + "/" + hex + "." + std::to_string(getpid());
    const std::string common = " -std=c++17 -fno-strict-aliasing -include " + quote(dir + "/kernel-prelude.h") +
                               " -I" + quote(dir) + flags + " -x c++ ";
    std::ofstream(stem + ".cu") << "#line 1 \"" << p->name << "\"\n" << p->source;
    p->log.clear();
    std::string preprocessed;
    int status = run(cxx + " -E -P" + common + quote(stem + ".cu") + " -o " + quote(stem + ".i"), p->log);
    if (status == 0) {
      std::ofstream(stem + ".cpp") << "#include \"" << stem << ".cu\"\n" << registrations(read_file(stem + ".i"));
      status = run(cxx + " -O2 -g0 -fPIC -shared" + common + quote(stem + ".cpp") + " -o " + quote(stem + ".so") +
                       " -x none " + quote(dir + "/libcuda.so.1") + " -Wl,-rpath," + quote(dir),
                   p->log);
    }
    for (const char* ext : {".cu", ".i", ".cpp"}) unlink((stem + ext).c_str());
    if (status != 0) {
      unlink((stem + ".so").c_str());
      if (p->log.empty()) p->log = "cuda-emu: could not run " + cxx;
      return 6;
    }
    rename((stem + ".so").c_str(), so.c_str());
  }
  const std::string bytes = read_file(so);
  const uint64_t size = bytes.size();
  p->image.assign((const unsigned char*)"KILNEMU1", (const unsigned char*)"KILNEMU1" + 8);
  p->image.insert(p->image.end(), (const unsigned char*)&size, (const unsigned char*)&size + 8);
  p->image.insert(p->image.end(), bytes.begin(), bytes.end());
  return 0;
}

int nvrtcGetProgramLogSize(void* prog, size_t* size) {
  *size = static_cast<Program*>(prog)->log.size() + 1;
  return 0;
}
int nvrtcGetProgramLog(void* prog, char* log) {
  const auto& l = static_cast<Program*>(prog)->log;
  std::memcpy(log, l.c_str(), l.size() + 1);
  return 0;
}

int nvrtcGetCUBINSize(void* prog, size_t* size) {
  *size = static_cast<Program*>(prog)->image.size();
  return 0;
}
int nvrtcGetCUBIN(void* prog, unsigned char* out) {
  const auto& img = static_cast<Program*>(prog)->image;
  std::memcpy(out, img.data(), img.size());
  return 0;
}
int nvrtcGetPTXSize(void* prog, size_t* size) { return nvrtcGetCUBINSize(prog, size); }
int nvrtcGetPTX(void* prog, unsigned char* out) { return nvrtcGetCUBIN(prog, out); }

}  // extern "C"
