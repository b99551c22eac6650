package strip

import "sync"

// Tail windows reused across messages: every part of every message needs
// one. Without reuse, many concurrent sessions churn hundreds of KiB per
// message and the heap (and RSS) grows with the garbage.
var tailBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2*tailKeep); return &b }}

// tailKeep is how much of a part's end the size pass keeps: enough for a
// zip's end-of-central-directory record (22 bytes) and its longest comment.
const tailKeep = 65535 + 22
