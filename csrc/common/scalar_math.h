// Elementary functions with one overload per accumulation type, usable on host and device.
#pragma once

#include <cmath>

#include "common/macros.h"

namespace affext {

AFFEXT_HOST_DEVICE float exp_acc(float x) { return expf(x); }
AFFEXT_HOST_DEVICE double exp_acc(double x) { return ::exp(x); }
AFFEXT_HOST_DEVICE float log_acc(float x) { return logf(x); }
AFFEXT_HOST_DEVICE double log_acc(double x) { return ::log(x); }
AFFEXT_HOST_DEVICE float pow_acc(float x, float y) { return powf(x, y); }
AFFEXT_HOST_DEVICE double pow_acc(double x, double y) { return ::pow(x, y); }
AFFEXT_HOST_DEVICE float abs_acc(float x) { return fabsf(x); }
AFFEXT_HOST_DEVICE double abs_acc(double x) { return ::fabs(x); }
AFFEXT_HOST_DEVICE float sqrt_acc(float x) { return sqrtf(x); }
AFFEXT_HOST_DEVICE double sqrt_acc(double x) { return ::sqrt(x); }
// a * b + c rounded once: the same bits on the host and the device, whatever the compiler's
// contraction of a * b + c would do.
AFFEXT_HOST_DEVICE float fma_acc(float a, float b, float c) { return fmaf(a, b, c); }
AFFEXT_HOST_DEVICE double fma_acc(double a, double b, double c) { return ::fma(a, b, c); }

}  // namespace affext
