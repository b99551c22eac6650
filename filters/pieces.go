package filters

// Piece is one run of a message that a filter or a chain delivers, stated
// against the message it was given: Len bytes of that message from Off, or,
// when Data is not nil, Data itself. A delivered message that is the given
// one with a few runs changed (header fields added, a Subject rewritten, an
// attachment replaced by a notice) is a short list of pieces; popgate's
// message memory keeps the list, not the message, and rebuilds the same
// bytes from the upstream's copy.
type Piece struct {
	Off, Len int64
	Data     []byte
}

// PiecesSize is the size of the message pieces describe.
func PiecesSize(pieces []Piece) int64 {
	var n int64
	for _, p := range pieces {
		if p.Data != nil {
			n += int64(len(p.Data))
		} else {
			n += p.Len
		}
	}
	return n
}
