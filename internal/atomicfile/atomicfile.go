// Package atomicfile replaces a file in one step: a reader sees the old
// content or the new, never part of either.
package atomicfile

import (
	"io"
	"os"
	"path/filepath"
)

// Write writes what write produces to a new file (mode 0600) beside path,
// then renames it over path. On an error the new file goes and path is left
// as it was.
func Write(path string, write func(io.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	err = write(tmp)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}
