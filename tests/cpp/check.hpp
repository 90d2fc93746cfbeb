// The assertion macros of the C++ tests: each failed check prints where and what, and
// counts in g_failures; main() ends with report(), non-zero when any check failed.
#pragma once

#include <cmath>
#include <cstdio>
#include <string>

inline int g_failures = 0;

// What main() returns: 1 after printing the count of failed checks, or 0 after printing
// `passed` when every check held.
inline int report(const char* passed) {
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("%s\n", passed);
  return 0;
}

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                                 \
    }                                                                               \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                                      \
  do {                                                                                             \
    const double a_ = (a), b_ = (b);                                                               \
    if (!(std::fabs(a_ - b_) <= (tol))) {                                                          \
      std::fprintf(                                                                                \
          stderr, "%s:%d: %s = %.17g, expected %s = %.17g\n", __FILE__, __LINE__, #a, a_, #b, b_); \
      ++g_failures;                                                                                \
    }                                                                                              \
  } while (0)

#define CHECK_EQ_STR(a, b)                                                                      \
  do {                                                                                          \
    const std::string a_ = (a), b_ = (b);                                                       \
    if (a_ != b_) {                                                                             \
      std::fprintf(                                                                             \
          stderr, "%s:%d: got\n  \"%s\"\nexpected\n  \"%s\"\n", __FILE__, __LINE__, a_.c_str(), \
          b_.c_str());                                                                          \
      ++g_failures;                                                                             \
    }                                                                                           \
  } while (0)
