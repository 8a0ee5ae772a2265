// nybble/nybble.hpp — the whole C++ API.
#pragma once

#include "nybble/dtype.hpp"
#include "nybble/error.hpp"
#include "nybble/formats.hpp"
#include "nybble/ops.hpp"
#include "nybble/optim.hpp"
#include "nybble/tensor_view.hpp"
