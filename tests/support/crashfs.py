#!/usr/bin/python3
"""A file system that forgets what was not synced, as a power cut does: for the tests.

    crashfs.py BACKING MOUNTPOINT

Mounts BACKING at MOUNTPOINT (FUSE, in the foreground; Debian's python3-fusepy). Reads and
writes through the mount behave as usual, but a file's new contents stay in this process's
memory until the file is synced (fsync or fdatasync), which writes them to BACKING and syncs
them there. So `kill -9` of this process is a power cut: BACKING holds exactly what was synced.

Metadata (create, rename, unlink, mkdir) goes to BACKING at once, as if every directory were
synced after each change: stricter would also lose files whose directory was never synced, which
these tests do not look at. A file's size as seen through the mount includes what is unsynced.
"""

import errno
import os
import sys
import threading

try:
    from fusepy import FUSE, FuseOSError, Operations
except ImportError:  # fusepy from PyPI names its module fuse
    from fuse import FUSE, FuseOSError, Operations


class CrashFS(Operations):
    def __init__(self, root):
        self.root = root
        # path -> bytearray: the whole file as the processes see it, not on disk yet.
        self.unsynced = {}
        self.mutex = threading.RLock()

    def _path(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _contents(self, path):
        """The file's contents, held in memory from now on until synced."""
        data = self.unsynced.get(path)
        if data is None:
            with open(self._path(path), "rb") as f:
                data = bytearray(f.read())
            self.unsynced[path] = data
        return data

    def _errno(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            raise FuseOSError(e.errno)

    def getattr(self, path, fh=None):
        st = self._errno(os.lstat, self._path(path))
        attrs = {k: getattr(st, k) for k in (
            "st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size",
            "st_uid")}
        with self.mutex:
            if path in self.unsynced:
                attrs["st_size"] = len(self.unsynced[path])
        return attrs

    def readdir(self, path, fh):
        return [".", ".."] + self._errno(os.listdir, self._path(path))

    def statfs(self, path):
        st = os.statvfs(self._path(path))
        return {k: getattr(st, k) for k in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
            "f_flag", "f_frsize", "f_namemax")}

    def access(self, path, mode):
        if not os.access(self._path(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        return self._errno(os.chmod, self._path(path), mode)

    def chown(self, path, uid, gid):
        return self._errno(os.chown, self._path(path), uid, gid)

    def utimens(self, path, times=None):
        return self._errno(os.utime, self._path(path), times)

    def mkdir(self, path, mode):
        return self._errno(os.mkdir, self._path(path), mode)

    def rmdir(self, path):
        return self._errno(os.rmdir, self._path(path))

    def unlink(self, path):
        with self.mutex:
            self._errno(os.unlink, self._path(path))
            self.unsynced.pop(path, None)

    def rename(self, old, new):
        with self.mutex:
            self._errno(os.rename, self._path(old), self._path(new))
            self.unsynced.pop(new, None)
            if old in self.unsynced:
                self.unsynced[new] = self.unsynced.pop(old)

    def create(self, path, mode, fi=None):
        with self.mutex:
            fd = self._errno(os.open, self._path(path), os.O_WRONLY | os.O_CREAT, mode)
            os.close(fd)
            # A new file is empty; an existing one opened with O_TRUNC is emptied (unsynced).
            self.unsynced[path] = bytearray()
        return 0

    def open(self, path, flags):
        with self.mutex:
            if flags & os.O_TRUNC:
                self.unsynced[path] = bytearray()
        return 0

    def read(self, path, size, offset, fh):
        with self.mutex:
            if path in self.unsynced:
                return bytes(self.unsynced[path][offset:offset + size])
        with open(self._path(path), "rb") as f:
            f.seek(offset)
            return f.read(size)

    def write(self, path, data, offset, fh):
        with self.mutex:
            contents = self._errno(self._contents, path)
            if offset > len(contents):
                contents.extend(bytes(offset - len(contents)))
            contents[offset:offset + len(data)] = data
        return len(data)

    def truncate(self, path, length, fh=None):
        with self.mutex:
            contents = self._errno(self._contents, path)
            if length < len(contents):
                del contents[length:]
            else:
                contents.extend(bytes(length - len(contents)))

    def fsync(self, path, datasync, fh):
        with self.mutex:
            contents = self.unsynced.pop(path, None)
            if contents is None:
                return 0
            try:
                with open(self._path(path), "r+b") as f:
                    f.write(contents)
                    f.truncate(len(contents))
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                raise FuseOSError(e.errno)
        return 0

    def fsyncdir(self, path, datasync, fh):
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return 0


if __name__ == "__main__":
    backing, mountpoint = sys.argv[1], sys.argv[2]
    FUSE(CrashFS(os.path.abspath(backing)), mountpoint, foreground=True, nothreads=False,
         direct_io=True, attr_timeout=0, entry_timeout=0, allow_other=True)
