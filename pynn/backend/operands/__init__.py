"""Operand checks shared by the CPU and OpenCL backends: ``common`` holds the policy objects
and the scalar checks, one module per op family holds one function per op (see common's
docstring and the rule at the top of ``pynn.backend.api``)."""
