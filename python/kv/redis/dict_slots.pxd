"""Bringing a large dict's slots into the cache before a batch uses them.

Applying a batch of SETs to a map of 100,000 keys, a node spent a quarter
of its time in three cache misses per command, one after the other: the
lookup reads the index slot the key's hash names, then the entry that slot
points to, then that entry's key (to compare) and value (the SET frees
it). Each waits for the one before, so a batch's misses add up. Here the
hashes of a group of commands' keys are taken first, then one short loop
per link loads that link for every key (every index slot, then every
entry, then every key and value, then every key's bytes): the loads of
one loop do not depend on each other, so the CPU has many in flight at
once, and the lookups that follow find their lines in the cache.
Measured on a 3-node cluster under pipelined SETs (interleaved pairs,
README's Redis section): a follower's CPU per SET 1.8 -> 1.4-1.5 us, SETs
a second about +19% (+9% with one pass per link over the commands
themselves, +7% more with the loops over the hashes, +3% more with the
loop over the keys' bytes).

It reads the layout of CPython's dict keys (Include/internal/pycore_dict.h),
the same in 3.11, 3.12 and 3.13 with the GIL; DICT_SLOTS_READ is false
elsewhere and the passes do nothing. It only reads: a key's lookup, and so
every result, is the dict's own. Each read stays inside the keys object
(an index slot within its table, an entry below its count of entries) or
in a key or value the dict holds; the smoke test of every wheel checks
the layout against the dict's own lookups (fast.first_probe_hits).

Loads, not prefetch instructions: in a virtual machine most of these
lines also miss the TLB, and a prefetch that misses the TLB may be dropped
(measured here: prefetches gained nothing, loads halved the lookups).
"""
from cpython.object cimport PyObject

cdef extern from *:
    """
    #if !defined(PYPY_VERSION) && !defined(Py_LIMITED_API) && !defined(Py_GIL_DISABLED) \\
        && PY_VERSION_HEX >= 0x030B00F0 && PY_VERSION_HEX < 0x030E0000
    #define RC_DICT_SLOTS_READ 1
    /* struct _dictkeysobject of CPython 3.11 to 3.13. */
    typedef struct {
        Py_ssize_t dk_refcnt;
        uint8_t dk_log2_size;
        uint8_t dk_log2_index_bytes;
        uint8_t dk_kind;
        uint32_t dk_version;
        Py_ssize_t dk_usable;
        Py_ssize_t dk_nentries;
        char dk_indices[];
    } rc_dict_keys;
    /* PyDictKeyEntry: the entries of a table of any keys (not only str). */
    typedef struct { Py_hash_t hash; PyObject *key; PyObject *value; } rc_dict_entry;

    /* The keys of `d` if it is a dict whose keys are a table of any keys
       (DICT_KEYS_GENERAL, 0) with sizes that layout allows; else NULL. */
    static inline rc_dict_keys *rc_generic_keys(PyObject *d) {
        rc_dict_keys *k;
        int width;
        if (d == NULL || !PyDict_Check(d)) return NULL;
        k = (rc_dict_keys *)((PyDictObject *)d)->ma_keys;
        width = k->dk_log2_index_bytes - k->dk_log2_size;
        if (k->dk_kind != 0 || k->dk_log2_size < 3
                || k->dk_log2_size > (int)(8 * sizeof(Py_ssize_t)) - 2
                || width < 0 || width > 3 || k->dk_nentries < 0
                || k->dk_nentries > ((Py_ssize_t)1 << k->dk_log2_size))
            return NULL;
        return k;
    }
    /* The index slot a hash probes first. */
    static inline const char *rc_index_at(rc_dict_keys *k, Py_hash_t h) {
        size_t i = (size_t)h & (((size_t)1 << k->dk_log2_size) - 1);
        return k->dk_indices + (i << (k->dk_log2_index_bytes - k->dk_log2_size));
    }
    /* The entry the first probed slot names, or NULL (empty, or deleted). */
    static inline rc_dict_entry *rc_first_entry(rc_dict_keys *k, Py_hash_t h) {
        const char *p = rc_index_at(k, h);
        Py_ssize_t ix;
        switch (k->dk_log2_index_bytes - k->dk_log2_size) {
            case 0: ix = *(const int8_t *)p; break;
            case 1: ix = *(const int16_t *)p; break;
            case 2: ix = *(const int32_t *)p; break;
            default: ix = *(const int64_t *)p;
        }
        if (ix < 0 || ix >= k->dk_nentries) return NULL;
        return (rc_dict_entry *)(k->dk_indices + ((size_t)1 << k->dk_log2_index_bytes)) + ix;
    }
    /* Whether the entry `key`'s first probe names is `key` itself. */
    static inline int rc_first_probe_is(PyObject *d, PyObject *key, Py_hash_t h) {
        rc_dict_keys *k = rc_generic_keys(d);
        rc_dict_entry *e = k == NULL ? NULL : rc_first_entry(k, h);
        return e != NULL && e->key == key;
    }
    /* Brings in the links of the lookups of n hashes: every index slot,
       then every entry they name, then those entries' keys and values
       where their hash is the one looked up (the lookup compares the key;
       a write frees the value it replaces), then those keys' bytes. Each link's loop is
       short, so many of its loads are in flight at once. The sum returned
       means nothing: it keeps the compiler from dropping the loads. */
    static inline Py_ssize_t rc_touch_slots(PyObject *d, const Py_hash_t *hs, Py_ssize_t n) {
        rc_dict_keys *k = rc_generic_keys(d);
        rc_dict_entry *e;
        Py_ssize_t i, sink = 0;
        if (k == NULL) return 0;
        for (i = 0; i < n; i++) sink += *(const char *)rc_index_at(k, hs[i]);
        for (i = 0; i < n; i++) {
            e = rc_first_entry(k, hs[i]);
            if (e != NULL) sink += e->hash == hs[i];
        }
        for (i = 0; i < n; i++) {
            e = rc_first_entry(k, hs[i]);
            if (e != NULL && e->hash == hs[i] && e->key != NULL)
                sink += Py_REFCNT(e->key) + (e->value != NULL ? Py_REFCNT(e->value) : 0);
        }
        /* The compare reads a bytes key's size and bytes, from 16 bytes
           in: often on another cache line than its refcount (a 16-byte
           key's 64-byte block starts 48 bytes into a line). The NUL after
           the bytes is the object's own. */
        for (i = 0; i < n; i++) {
            e = rc_first_entry(k, hs[i]);
            if (e != NULL && e->hash == hs[i] && e->key != NULL
                    && Py_TYPE(e->key) == &PyBytes_Type)
                sink += PyBytes_AS_STRING(e->key)[PyBytes_GET_SIZE(e->key)];
        }
        return sink;
    }
    #else
    #define RC_DICT_SLOTS_READ 0
    static inline Py_ssize_t rc_touch_slots(PyObject *d, const Py_hash_t *hs, Py_ssize_t n) { return 0; }
    static inline int rc_first_probe_is(PyObject *d, PyObject *key, Py_hash_t h) { return 0; }
    #endif
    """
    bint RC_DICT_SLOTS_READ
    bint rc_first_probe_is(object d, object key, Py_hash_t h)
    Py_ssize_t rc_touch_slots(object d, const Py_hash_t* hs, Py_ssize_t n)


cdef enum:
    # Commands whose slots are brought in together: their misses overlap,
    # and their lines stay in the cache until their lookups.
    TOUCH_SPAN = 32
    # A batch shorter than this gains too little to pay for the passes.
    TOUCH_MIN = 8


cdef inline Py_ssize_t touch_key_slots(dict data, list cmds, Py_ssize_t start) except -1:
    """Brings in the slots of `data` that the keys of the TOUCH_SPAN
    commands from cmds[start] (each one's second item, where it is bytes)
    look up. Returns 0 or 1 (meaningless; see rc_touch_slots)."""
    cdef Py_hash_t hashes[TOUCH_SPAN]
    cdef Py_ssize_t i, n = 0
    # Up to the list's end as it is now: a command run before may have
    # changed it (never a plain one; a touch must not change a result).
    for i in range(start, min(start + TOUCH_SPAN, len(cmds))):
        c = cmds[i]
        if type(c) is list and len(<list>c) >= 2:
            key = (<list>c)[1]
            if type(key) is bytes:
                hashes[n] = hash(key)
                n += 1
    return rc_touch_slots(data, hashes, n) & 1
