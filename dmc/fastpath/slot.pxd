# Hash slots.
# Declarations; the code is in slot.pxi.

cdef enum:
    SLOT_COUNT = 16384
