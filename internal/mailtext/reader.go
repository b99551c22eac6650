package mailtext

import (
	"context"
	"io"
)

// NewReader returns a reader of r that fails with ctx's error once ctx has
// ended, checked before every read, so that a long copy stops promptly.
func NewReader(ctx context.Context, r io.Reader) io.Reader {
	return &ctxReader{ctx: ctx, r: r}
}

// NewReaderAt is NewReader for an io.ReaderAt.
func NewReaderAt(ctx context.Context, r io.ReaderAt) io.ReaderAt {
	return &ctxReaderAt{ctx: ctx, r: r}
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

type ctxReaderAt struct {
	ctx context.Context
	r   io.ReaderAt
}

func (c *ctxReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.ReadAt(p, off)
}
