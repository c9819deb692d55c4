#pragma once
#include "camex/route/concepts.hpp"
