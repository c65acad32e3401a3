# cython: language_level=3
"""SyncWorker: a thread that writes a buffer at an offset of a file and
makes it durable (fdatasync where it can), without the GIL.

Why it exists: FileLogStore hands each group to a thread so that the event
loop never blocks on a disk. A Python thread needs the GIL to start the job,
and the event loop thread usually still holds it when it hands the job over
(it is in the middle of a loop iteration), so the thread wakes twice: once
for the job, once for the GIL. On a 2-core VM each wake-up costs 30-50 us,
and a follower's acknowledgement waits for it. This thread never takes the
GIL between start and stop: the job is handed over under a mutex and a
condition variable, and completion is signalled by writing to a file
descriptor (an eventfd or a pipe) that the event loop watches.

One job at a time, by contract: submit() only after the previous job's
completion was signalled and collected with result().

Which sync it makes is chosen twice. At build time, by what the platform's
headers have (SYNC_CALLS): fdatasync where POSIX synchronized I/O is
available (Linux), fcntl(F_FULLFSYNC) on macOS (whose fsync leaves the data
in the drive's cache, and which declares no fdatasync), plain fsync
elsewhere. At run time, by the store's IOPath (iopath.py): `sync` names the
call, so RAFTCORE_PORTABLE_IO=1 makes a Linux build take the full-sync path
macOS takes.
"""
from libc.errno cimport EINTR, errno
from libc.stdint cimport uint64_t
from posix.types cimport off_t


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *mutex, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *mutex)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)
    int pthread_cond_init(pthread_cond_t *cond, void *attr)
    int pthread_cond_destroy(pthread_cond_t *cond)
    int pthread_cond_wait(pthread_cond_t *cond, pthread_mutex_t *mutex)
    int pthread_cond_signal(pthread_cond_t *cond)


cdef extern from "<unistd.h>" nogil:
    ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)
    ssize_t write(int fd, const void *buf, size_t count)


# The platform's syncs, chosen by the C preprocessor (see the module docstring).
cdef extern from *:
    """
    #include <fcntl.h>
    #include <unistd.h>
    #if defined(__APPLE__)
    #  define RAFTCORE_HAS_FDATASYNC 0
    #  define RAFTCORE_FULL_SYNC_NAME "F_FULLFSYNC"
    static int raftcore_full_sync(int fd) { return fcntl(fd, F_FULLFSYNC); }
    #else
    #  define RAFTCORE_FULL_SYNC_NAME "fsync"
    static int raftcore_full_sync(int fd) { return fsync(fd); }
    #  if defined(_POSIX_SYNCHRONIZED_IO) && _POSIX_SYNCHRONIZED_IO > 0
    #    define RAFTCORE_HAS_FDATASYNC 1
    #  else
    #    define RAFTCORE_HAS_FDATASYNC 0
    #  endif
    #endif
    #if RAFTCORE_HAS_FDATASYNC
    static int raftcore_data_sync(int fd) { return fdatasync(fd); }
    #else
    static int raftcore_data_sync(int fd) { return raftcore_full_sync(fd); }
    #endif
    """
    const bint RAFTCORE_HAS_FDATASYNC
    const char *RAFTCORE_FULL_SYNC_NAME
    int raftcore_full_sync(int fd) nogil
    int raftcore_data_sync(int fd) nogil


#: The sync calls this build can make, the preferred one first.
SYNC_CALLS = (("fdatasync",) if RAFTCORE_HAS_FDATASYNC else ()) + \
    (RAFTCORE_FULL_SYNC_NAME.decode(),)


cdef class SyncWorker:
    """Runs pwrite + sync jobs (fdatasync or a full sync) on a thread of its own,
    GIL-free.

    notify_fd: written (8 bytes: a 1 for an eventfd) when a job is done;
    the owner watches it (loop.add_reader), reads it and calls result().
    sync: the call that makes a job durable, one of SYNC_CALLS (ValueError
    otherwise), by default the first; `sync_call` says which one the worker
    makes.
    """

    cdef pthread_mutex_t _mutex
    cdef pthread_cond_t _cond
    cdef int _notify_fd
    cdef bint _has_job         # a job waits for the thread (under _mutex)
    cdef bint _stopping        # run() ends once no job waits (under _mutex)
    cdef int _fd
    cdef const unsigned char *_buf
    cdef Py_ssize_t _len
    cdef off_t _offset
    cdef int _errno            # the finished job's errno, 0 if it succeeded
    cdef object _data          # keeps the job's bytes alive while the thread reads them
    cdef bint _data_sync       # fdatasync, not the full sync
    cdef readonly str sync_call

    def __cinit__(self, int notify_fd, str sync=None):
        if sync is None:
            sync = SYNC_CALLS[0]
        if sync not in SYNC_CALLS:
            raise ValueError(f"SyncWorker: sync must be one of {SYNC_CALLS} on this "
                             f"platform, not {sync!r}")
        self.sync_call = sync
        self._data_sync = sync == "fdatasync"
        pthread_mutex_init(&self._mutex, NULL)
        pthread_cond_init(&self._cond, NULL)
        self._notify_fd = notify_fd

    def __dealloc__(self):
        pthread_cond_destroy(&self._cond)
        pthread_mutex_destroy(&self._mutex)

    def submit(self, int fd, bytes data, Py_ssize_t offset):
        """Starts writing `data` at `offset` of `fd`, then fdatasync."""
        self._data = data
        pthread_mutex_lock(&self._mutex)
        self._fd = fd
        self._buf = <const unsigned char *>data
        self._len = len(data)
        self._offset = offset
        self._has_job = True
        pthread_mutex_unlock(&self._mutex)
        # Signalled once the mutex is free: signalled under it, the thread
        # woke, preempted this one and blocked on the mutex it still held
        # until this one ran again (perf trace of a leader at 1 client: 59%
        # of groups, up to a few hundred us). It cannot miss the signal:
        # it checks _has_job under the mutex before it waits.
        pthread_cond_signal(&self._cond)

    def result(self):
        """The finished job's outcome: None, or the OSError it met."""
        self._data = None
        if self._errno:
            import os
            return OSError(self._errno, os.strerror(self._errno))
        return None

    def stop(self):
        """Lets run() return once the job in hand (if any) is done."""
        pthread_mutex_lock(&self._mutex)
        self._stopping = True
        pthread_mutex_unlock(&self._mutex)
        pthread_cond_signal(&self._cond)

    def run(self):
        """The thread's body: waits for jobs until stop()."""
        with nogil:
            self._serve()

    cdef void _serve(self) noexcept nogil:
        cdef uint64_t one = 1
        while True:
            pthread_mutex_lock(&self._mutex)
            while not self._has_job and not self._stopping:
                pthread_cond_wait(&self._cond, &self._mutex)
            if not self._has_job:
                pthread_mutex_unlock(&self._mutex)
                return
            self._has_job = False
            pthread_mutex_unlock(&self._mutex)
            self._errno = self._write_and_sync()
            while write(self._notify_fd, &one, 8) < 0 and errno == EINTR:
                pass

    cdef int _write_and_sync(self) noexcept nogil:
        cdef const unsigned char *p = self._buf
        cdef Py_ssize_t left = self._len
        cdef off_t offset = self._offset
        cdef ssize_t n
        while left > 0:
            n = pwrite(self._fd, p, left, offset)
            if n < 0:
                if errno == EINTR:
                    continue
                return errno
            p += n
            left -= n
            offset += n
        # EINTR is no I/O error; any other error is reported, never retried
        # (after a failed sync the kernel may have dropped the pages).
        while (raftcore_data_sync(self._fd) if self._data_sync
               else raftcore_full_sync(self._fd)) < 0:
            if errno != EINTR:
                return errno
        return 0
