package policy

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
)

// maxFileFuncSize bounds what file() reads: it is meant for secrets and small
// snippets, and a bound keeps a mistaken path (a log, a device) harmless.
const maxFileFuncSize = 1 << 20

func newEvalContext(baseDir string) *hcl.EvalContext {
	return &hcl.EvalContext{
		Functions: map[string]function.Function{
			"env":  envFunc(),
			"file": fileFunc(baseDir),
		},
	}
}

// envFunc is env("VAR") or env("VAR", "default").
func envFunc() function.Function {
	return function.New(&function.Spec{
		Description: `Returns the value of an environment variable; with a second argument, that value when the variable is unset.`,
		Params: []function.Parameter{
			{Name: "name", Type: cty.String},
		},
		VarParam: &function.Parameter{Name: "default", Type: cty.String},
		Type:     function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			if len(args) > 2 {
				return cty.NilVal, function.NewArgErrorf(2, "env takes at most two arguments, the variable name and a default")
			}
			name := args[0].AsString()
			if name == "" || strings.ContainsAny(name, "=\x00") {
				return cty.NilVal, function.NewArgErrorf(0, "%q is not a valid environment variable name", name)
			}
			if v, ok := os.LookupEnv(name); ok {
				if !utf8.ValidString(v) {
					return cty.NilVal, fmt.Errorf("environment variable %q is not valid UTF-8", name)
				}
				return cty.StringVal(v), nil
			}
			if len(args) == 2 {
				return args[1], nil
			}
			return cty.NilVal, fmt.Errorf("environment variable %q is not set; set it, or give a default as in env(%q, \"default\")", name, name)
		},
	})
}

// fileFunc is file("path"), relative paths taken from baseDir.
func fileFunc(baseDir string) function.Function {
	return function.New(&function.Spec{
		Description: `Returns the contents of a file, without one trailing newline. A relative path is relative to the directory of the configuration file.`,
		Params: []function.Parameter{
			{Name: "path", Type: cty.String},
		},
		Type: function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			p := args[0].AsString()
			if p == "" {
				return cty.NilVal, function.NewArgErrorf(0, "the path is empty")
			}
			s, err := readSmallFile(resolvePath(baseDir, p))
			if err != nil {
				return cty.NilVal, err
			}
			switch {
			case strings.HasSuffix(s, "\r\n"):
				s = s[:len(s)-2]
			case strings.HasSuffix(s, "\n"):
				s = s[:len(s)-1]
			}
			return cty.StringVal(s), nil
		},
	})
}

// readSmallFile reads a regular file of at most maxFileFuncSize bytes of
// UTF-8 text.
func readSmallFile(path string) (string, error) {
	b, err := readRegularFile(path, maxFileFuncSize)
	if err != nil {
		return "", cleanPathError(err)
	}
	if !utf8.Valid(b) {
		return "", fmt.Errorf("%s is not valid UTF-8 text", path)
	}
	return string(b), nil
}

// readRegularFile reads a regular file of at most limit bytes. It looks
// before it opens, since opening a FIFO or a device can block or never end.
func readRegularFile(path string, limit int64) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err = f.Stat(); err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return b, nil
}

// cleanPathError turns "open x: no such file or directory" into
// "x: no such file or directory", which reads better inside a diagnostic.
func cleanPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %v", pe.Path, pe.Err)
	}
	return err
}

// resolvePath joins a relative path with the configuration's directory.
func resolvePath(baseDir, p string) string {
	if p == "" || filepath.IsAbs(p) || baseDir == "" || baseDir == "." {
		return p
	}
	return filepath.Join(baseDir, p)
}
