/* placeholder while the kernel is being written */
#include "internal.h"
