// Error messages built with to_string: on the GPU image, std::ostringstream
// inside this library crashed the process (a libstdc++ mismatch, not
// investigated further), so the runtime never uses iostreams.
#pragma once

#include <cstdio>
#include <string>

namespace mpk {

class Message {
 public:
  Message& operator<<(const char* s) { text_ += s; return *this; }
  Message& operator<<(const std::string& s) { text_ += s; return *this; }
  Message& operator<<(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    text_ += buf;
    return *this;
  }
  template <typename T>
  Message& operator<<(T v) { text_ += std::to_string(v); return *this; }
  std::string str() const { return text_; }

 private:
  std::string text_;
};

}  // namespace mpk
