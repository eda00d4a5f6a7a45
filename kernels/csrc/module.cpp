// The Python module scl_kernels._C. Importing it runs the static initialisers of every kernel file in
// csrc/, which register the scl::*_native ops with the dispatcher; the module itself holds nothing.
#include <Python.h>

static struct PyModuleDef scl_module = {PyModuleDef_HEAD_INIT, "_C", "scl_kernels C++ CPU kernels", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&scl_module); }
