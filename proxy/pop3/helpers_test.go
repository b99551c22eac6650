package pop3

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing/iotest"
)

// chunkReader returns the data in pieces of random sizes (1..max).
type chunkReader struct {
	data []byte
	rng  *rand.Rand
	max  int
}

func newChunkReader(data []byte, seed uint64, max int) *chunkReader {
	return &chunkReader{data: data, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), max: max}
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := 1 + r.rng.IntN(r.max)
	n = min(n, len(p), len(r.data))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

// segReader returns each segment in its own Read calls (never joining two).
type segReader struct{ segs [][]byte }

func (r *segReader) Read(p []byte) (int, error) {
	for len(r.segs) > 0 && len(r.segs[0]) == 0 {
		r.segs = r.segs[1:]
	}
	if len(r.segs) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.segs[0])
	r.segs[0] = r.segs[0][n:]
	return n, nil
}

// countReader counts the bytes it delivered.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// repeatReader returns n copies of b, then the tail.
func repeatReader(b byte, n int64, tail string) io.Reader {
	return io.MultiReader(io.LimitReader(byteRepeater(b), n), bytes.NewReader([]byte(tail)))
}

type byteRepeater byte

func (b byteRepeater) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

// readerVariants returns named ways of delivering data.
func readerVariants(data []byte) map[string]func() io.Reader {
	v := map[string]func() io.Reader{
		"whole":   func() io.Reader { return bytes.NewReader(data) },
		"onebyte": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(data)) },
		"dataerr": func() io.Reader { return iotest.DataErrReader(bytes.NewReader(data)) },
		"halfs":   func() io.Reader { return iotest.HalfReader(bytes.NewReader(data)) },
	}
	for seed := range uint64(8) {
		v["chunk"+string(rune('0'+seed))] = func() io.Reader { return newChunkReader(data, seed, 1+int(seed)*3) }
	}
	return v
}
