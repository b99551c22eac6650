// Package archivetest makes decompression bombs for the tests of the
// archive lister and of the filters that use it: real ones, built in
// milliseconds instead of by compressing gigabytes.
package archivetest

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"sync"
)

// bitWriter writes a DEFLATE bit stream (least significant bit first).
type bitWriter struct {
	buf []byte
	acc uint64
	n   uint
}

func (w *bitWriter) bits(v uint64, n uint) {
	w.acc |= v << w.n
	w.n += n
	for w.n >= 8 {
		w.buf = append(w.buf, byte(w.acc))
		w.acc >>= 8
		w.n -= 8
	}
}

// code writes a Huffman code, which DEFLATE stores most significant bit
// first.
func (w *bitWriter) code(c uint64, n uint) {
	var r uint64
	for i := range n {
		r |= (c >> i & 1) << (n - 1 - i)
	}
	w.bits(r, n)
}

func (w *bitWriter) flush() []byte {
	if w.n > 0 {
		w.buf = append(w.buf, byte(w.acc))
		w.acc, w.n = 0, 0
	}
	return w.buf
}

// Deflate returns a raw DEFLATE stream that inflates to 1+258*k zero bytes:
// one dynamic Huffman block in which "copy 258 bytes from distance 1" costs
// two bits, the best ratio DEFLATE allows (about 1032:1).
func Deflate(k int) []byte {
	w := &bitWriter{}
	w.bits(1, 1)  // BFINAL
	w.bits(2, 2)  // dynamic Huffman
	w.bits(29, 5) // HLIT: 286 literal/length codes
	w.bits(1, 5)  // HDIST: 2 distance codes
	w.bits(14, 4) // HCLEN: 18 code length codes
	// Code length code lengths, in the RFC 1951 order 16 17 18 0 8 7 9 6 10
	// 5 11 4 12 3 13 2 14 1: symbol 18 has length 1, symbols 1 and 2 length 2.
	for _, l := range []uint64{0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2} {
		w.bits(l, 3)
	}
	// Canonical codes: 18 → 0, 1 → 10, 2 → 11.
	sym18 := func(zeros int) { w.code(0, 1); w.bits(uint64(zeros-11), 7) }
	sym1 := func() { w.code(2, 2) }
	sym2 := func() { w.code(3, 2) }
	// Literal/length lengths: 0 → 2, 1…255 → 0, 256 → 2, 257…284 → 0, 285 → 1.
	sym2()
	sym18(138)
	sym18(117)
	sym2()
	sym18(28)
	sym1()
	// Distance lengths: 0 → 1, 1 → 1.
	sym1()
	sym1()
	// Data: literal 0 (code 10), k × (length 258: code 0, distance 1: code
	// 0), end of block (code 11).
	w.code(2, 2)
	for range k {
		w.bits(0, 2)
	}
	w.code(3, 2)
	return w.flush()
}

// GigK is the k of Deflate that inflates to just under 1 GiB
// (1,073,741,821 bytes).
const GigK = (1<<30 - 1) / 258

func zeroCRC(size uint64) uint32 {
	zero := make([]byte, 1<<20)
	var crc uint32
	for left := size; left > 0; {
		n := min(left, uint64(len(zero)))
		crc = crc32.Update(crc, crc32.IEEETable, zero[:n])
		left -= n
	}
	return crc
}

var zipOnce struct {
	sync.Once
	zip []byte
}

// Zip is a real zip bomb: one member, bomb.bin, of about 1 GB of zeros in
// about 1 MB, its sizes declared truthfully.
func Zip() []byte {
	zipOnce.Do(func() {
		data := Deflate(GigK)
		size := uint64(1 + 258*GigK)
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		w, err := zw.CreateRaw(&zip.FileHeader{Name: "bomb.bin", Method: zip.Deflate, CRC32: zeroCRC(size),
			CompressedSize64: uint64(len(data)), UncompressedSize64: size})
		if err != nil {
			panic(err)
		}
		w.Write(data)
		zw.Close()
		zipOnce.zip = buf.Bytes()
	})
	return zipOnce.zip
}

// Gzip is a gzip stream of 1+258*k zero bytes, its member named name ("":
// none), with a valid trailer.
func Gzip(k int, name string) []byte {
	var b bytes.Buffer
	flags := byte(0)
	if name != "" {
		flags = 8 // FNAME
	}
	b.Write([]byte{0x1f, 0x8b, 8, flags, 0, 0, 0, 0, 0, 3})
	if name != "" {
		b.WriteString(name)
		b.WriteByte(0)
	}
	b.Write(Deflate(k))
	size := uint64(1 + 258*k)
	b.Write(binary.LittleEndian.AppendUint32(nil, zeroCRC(size)))
	b.Write(binary.LittleEndian.AppendUint32(nil, uint32(size)))
	return b.Bytes()
}
