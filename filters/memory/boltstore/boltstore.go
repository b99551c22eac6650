// Package boltstore is the embedded memory.Store: one bbolt file on local
// disk, for a single popgate instance.
//
// Layout: bucket "records" maps a key's Hash (16 bytes) to a value of 4
// bytes of last use (unix seconds, big endian) followed by the record's
// memory.Encode form; bucket "meta" holds the layout version.
//
// Writes: Put and Delete go to one writer goroutine that commits whatever
// has queued up in one transaction (group commit): concurrent puts share an
// fsync, and a lone put costs one commit without waiting for a batch to
// fill. bbolt's own db.Batch does the same but runs the batch and its commit
// in goroutines of its own, where a panic or a memory fault on a corrupt
// page would end the process; here every bbolt call runs under a guard that
// turns both into an error (ErrCorrupt).
//
// Corruption: Open reads the whole tree under that guard. A file that does
// not open as bbolt, or fails that read, is moved aside to
// PATH.corrupt-<unix time> with a warning in the log, and a fresh file is
// started: the store is a cache, so losing it costs rescans only.
//
// Retention: a record not used (Put or Get) for Options.Retention is
// deleted by a purge every Options.PurgeInterval. A Get does not write: it
// notes the key when its use time is older than a day (or a quarter of the
// retention, if shorter), and the notes are written in one transaction a
// minute.
package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/popgate/popgate/filters/memory"
)

// Options tune a Store; zero values take the defaults.
type Options struct {
	// Retention: records not used for this long are deleted (default 30
	// days).
	Retention time.Duration
	// PurgeInterval: how often the purge runs (default 1 hour).
	PurgeInterval time.Duration

	now func() time.Time // tests: the clock
}

const (
	// DefaultRetention is Options.Retention's default.
	DefaultRetention = 30 * 24 * time.Hour
	// DefaultPurgeInterval is Options.PurgeInterval's default.
	DefaultPurgeInterval = time.Hour

	layoutVersion = "1"
	useLen        = 4           // bytes of last-use time before the record
	maxBatch      = 1000        // write requests in one transaction at most
	purgeChunk    = 10000       // keys deleted per purge transaction at most
	maxTouches    = 100000      // pending use-time updates kept at most
	touchFlush    = time.Minute // how often pending use-time updates are written
	lockTimeout   = 5 * time.Second
)

var (
	bucketRecords = []byte("records")
	bucketMeta    = []byte("meta")
	keyVersion    = []byte("version")
)

// ErrCorrupt is wrapped by the errors of operations that met a corrupt page
// (a bbolt panic or a memory fault, recovered).
var ErrCorrupt = errors.New("boltstore: store file corrupt")

// ErrClosed is returned by operations on a closed Store.
var ErrClosed = errors.New("boltstore: closed")

// Store is a memory.Store in a bbolt file. It is safe for concurrent use.
type Store struct {
	db   *bolt.DB
	path string
	log  zerolog.Logger
	o    Options

	touchAfter time.Duration

	mu      sync.RWMutex // closed, and sends to writes
	closed  bool
	writes  chan *writeReq
	stop    chan struct{}
	wg      sync.WaitGroup
	corrupt sync.Once   // logs the first ErrCorrupt
	broken  atomic.Bool // a write met a corrupt page: bbolt's locks may be held for good

	tmu     sync.Mutex
	touches map[[memory.HashSize]byte]struct{}
}

var _ memory.Store = (*Store)(nil)

type writeReq struct {
	fn   func(b *bolt.Bucket) error
	done chan error // buffered: the writer never blocks on it
}

// Open opens (or creates) the store file at path. A file that is not a
// readable store is moved aside (see the package doc) and replaced by a
// fresh one; an error is returned only when no store can be opened at path
// at all (a directory that does not exist, no permission, the file locked
// by another process for 5 s).
func Open(path string, o Options, log zerolog.Logger) (*Store, error) {
	if o.Retention <= 0 {
		o.Retention = DefaultRetention
	}
	if o.PurgeInterval <= 0 {
		o.PurgeInterval = DefaultPurgeInterval
	}
	if o.now == nil {
		o.now = time.Now
	}
	db, err := openChecked(path)
	var ce *corruptError
	if errors.As(err, &ce) {
		aside := fmt.Sprintf("%s.corrupt-%d", path, time.Now().Unix())
		if rerr := os.Rename(path, aside); rerr != nil {
			return nil, fmt.Errorf("boltstore: %s is corrupt (%v) and could not be moved aside: %w", path, err, rerr)
		}
		log.Warn().Str("path", path).Str("moved_to", aside).Err(err).
			Msg("message memory: store file is corrupt; moved it aside and started a fresh one (messages will be scanned again)")
		db, err = openChecked(path)
	}
	if err != nil {
		return nil, err
	}
	s := &Store{
		db: db, path: path, log: log, o: o,
		touchAfter: min(24*time.Hour, o.Retention/4),
		writes:     make(chan *writeReq, maxBatch),
		stop:       make(chan struct{}),
		touches:    map[[memory.HashSize]byte]struct{}{},
	}
	s.wg.Add(2)
	go s.writer()
	go s.maintain()
	return s, nil
}

// corruptError marks an Open failure that moving the file aside cures.
type corruptError struct{ err error }

func (e *corruptError) Error() string { return e.err.Error() }
func (e *corruptError) Unwrap() error { return e.err }

// guard runs f with memory faults turned into panics, and panics into an
// error wrapping ErrCorrupt. bbolt reads pages straight from its mmap: a
// corrupt page panics (an index out of range, "invalid page type"), and a
// page past the end of a truncated file faults (SIGBUS).
func guard(f func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v", ErrCorrupt, p)
		}
	}()
	return f()
}

// openChecked opens path and reads every page of the tree, under guard. A
// failure that a fresh file would cure comes back as a *corruptError.
func openChecked(path string) (*bolt.DB, error) {
	var db *bolt.DB
	err := guard(func() error {
		var err error
		db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout, FreelistType: bolt.FreelistMapType})
		return err
	})
	if err != nil {
		// The file could not be opened or locked (no such directory, no
		// permission, a directory, an I/O error, another process holding
		// it): a fresh file would not help. Anything else bbolt says about
		// the file (invalid, checksum, version, "file size too small", a
		// panic) is about its content.
		var pe *fs.PathError
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("boltstore: %s is in use by another process (another popgate sharing the directory?): give each instance a memory path of its own, or share the memory through Redis: %w", path, err)
		}
		if errors.As(err, &pe) || errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("boltstore: opening %s: %w", path, err)
		}
		return nil, &corruptError{fmt.Errorf("boltstore: opening %s: %w", path, err)}
	}
	err = guard(func() error {
		return db.Update(func(tx *bolt.Tx) error {
			meta, err := tx.CreateBucketIfNotExists(bucketMeta)
			if err != nil {
				return err
			}
			switch v := meta.Get(keyVersion); {
			case v == nil:
				if err := meta.Put(keyVersion, []byte(layoutVersion)); err != nil {
					return err
				}
			case string(v) != layoutVersion:
				return fmt.Errorf("layout version %q, this popgate writes %q", v, layoutVersion)
			}
			b, err := tx.CreateBucketIfNotExists(bucketRecords)
			if err != nil {
				return err
			}
			// Touch every page of the tree: a corrupt one panics or faults
			// here, under guard, rather than later on a caller's path.
			return b.ForEach(func(k, v []byte) error {
				if len(k) != memory.HashSize {
					return fmt.Errorf("key of %d bytes", len(k))
				}
				return nil
			})
		})
	})
	if err != nil {
		_ = guard(db.Close)
		return nil, &corruptError{fmt.Errorf("boltstore: checking %s: %w", path, err)}
	}
	return db, nil
}

// Close stops the purge and the writer (after writing what was queued and
// the pending use times) and closes the file. It is idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	s.wg.Wait()
	if s.broken.Load() {
		// bbolt may still hold its writer lock (a panic in a rollback skips
		// the unlock): db.Close would wait for ever. The file stays open
		// (and locked) until the process ends; the next start moves it
		// aside.
		return fmt.Errorf("%w: %s left open", ErrCorrupt, s.path)
	}
	return guard(s.db.Close)
}

// noteCorrupt logs the first error of a corrupt page. After one in a write
// transaction (write), the store is broken: every operation fails at once.
// bbolt does not promise to release its locks when a page panics in a
// rollback, so the next transaction could wait for ever.
func (s *Store) noteCorrupt(err error, write bool) {
	if errors.Is(err, ErrCorrupt) {
		if write {
			s.broken.Store(true)
		}
		s.corrupt.Do(func() {
			s.log.Error().Str("path", s.path).Err(err).
				Msg("message memory: store file is corrupt; its operations fail (misses) until popgate restarts and moves it aside")
		})
	}
}

func (s *Store) brokenErr() error {
	return fmt.Errorf("%w: %s (an earlier operation met a corrupt page)", ErrCorrupt, s.path)
}

// update hands fn to the writer and waits for its commit (or ctx).
func (s *Store) update(ctx context.Context, fn func(b *bolt.Bucket) error) error {
	req := &writeReq{fn: fn, done: make(chan error, 1)}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	select {
	case s.writes <- req:
	case <-ctx.Done():
		s.mu.RUnlock()
		return ctx.Err()
	}
	s.mu.RUnlock()
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// writer commits queued write requests, as many per transaction as have
// queued up (at most maxBatch), until Close; then it commits what is left.
func (s *Store) writer() {
	defer s.wg.Done()
	batch := make([]*writeReq, 0, maxBatch)
	for {
		select {
		case req := <-s.writes:
			batch = append(batch[:0], req)
		case <-s.stop:
			// Senders are done (Close holds the lock after closed was
			// set): commit the rest.
			for {
				batch = batch[:0]
				for len(batch) < maxBatch && len(s.writes) > 0 {
					batch = append(batch, <-s.writes)
				}
				if len(batch) == 0 {
					return
				}
				s.commit(batch)
			}
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case req := <-s.writes:
				batch = append(batch, req)
			default:
				break fill
			}
		}
		s.commit(batch)
	}
}

func (s *Store) commit(batch []*writeReq) {
	errs := make([]error, len(batch))
	if s.broken.Load() {
		for _, req := range batch {
			req.done <- s.brokenErr()
		}
		return
	}
	err := guard(func() error {
		return s.db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketRecords)
			for i, req := range batch {
				errs[i] = req.fn(b)
			}
			return nil
		})
	})
	s.noteCorrupt(err, true)
	for i, req := range batch {
		if err != nil {
			req.done <- err
		} else {
			req.done <- errs[i]
		}
	}
}

// Put stores r under k; its use time is now.
func (s *Store) Put(ctx context.Context, k memory.Key, r *memory.Record) error {
	if err := r.Validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	h := k.Hash()
	v := make([]byte, useLen, useLen+256)
	binary.BigEndian.PutUint32(v, unixSeconds(s.o.now()))
	v = append(v, memory.Encode(r)...)
	return s.update(ctx, func(b *bolt.Bucket) error { return b.Put(h[:], v) })
}

// Delete removes the records of ks (missing ones are no error).
func (s *Store) Delete(ctx context.Context, ks ...memory.Key) error {
	if len(ks) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	hs := make([][memory.HashSize]byte, len(ks))
	for i, k := range ks {
		hs[i] = k.Hash()
	}
	return s.update(ctx, func(b *bolt.Bucket) error {
		for i := range hs {
			if err := b.Delete(hs[i][:]); err != nil {
				return err
			}
		}
		return nil
	})
}

// Get returns k's record, or nil when there is none. A stored value that
// does not decode is an error.
func (s *Store) Get(ctx context.Context, k memory.Key) (*memory.Record, error) {
	rs, errs, err := s.get(ctx, []memory.Key{k})
	if err != nil {
		return nil, err
	}
	return rs[0], errs[0]
}

// GetMany returns one entry per key, nil where there is none, in one read
// transaction. A stored value that does not decode counts as none (and is
// logged).
func (s *Store) GetMany(ctx context.Context, ks []memory.Key) ([]*memory.Record, error) {
	rs, errs, err := s.get(ctx, ks)
	if err != nil {
		return nil, err
	}
	for i, e := range errs {
		if e != nil {
			s.log.Warn().Str("path", s.path).Str("mailbox", ks[i].Mailbox).Str("uidl", ks[i].UIDL).Err(e).
				Msg("message memory: a stored record does not decode; treated as missing")
		}
	}
	return rs, nil
}

func (s *Store) get(ctx context.Context, ks []memory.Key) ([]*memory.Record, []error, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return nil, nil, ErrClosed
	}
	if s.broken.Load() {
		return nil, nil, s.brokenErr()
	}
	rs := make([]*memory.Record, len(ks))
	errs := make([]error, len(ks))
	now := unixSeconds(s.o.now())
	var stale uint32 // use times before this are noted for an update
	if ta := uint32(s.touchAfter / time.Second); now > ta {
		stale = now - ta
	}
	var touch [][memory.HashSize]byte
	err := guard(func() error {
		return s.db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketRecords)
			for i, k := range ks {
				h := k.Hash()
				v := b.Get(h[:])
				if v == nil {
					continue
				}
				if len(v) < useLen {
					errs[i] = fmt.Errorf("%w: stored value of %d bytes", memory.ErrMalformed, len(v))
					continue
				}
				// Decode copies: nothing of v (mmap) outlives the transaction.
				rs[i], errs[i] = memory.Decode(v[useLen:])
				if errs[i] == nil && binary.BigEndian.Uint32(v) < stale {
					touch = append(touch, h)
				}
			}
			return nil
		})
	})
	if err != nil {
		s.noteCorrupt(err, false)
		return nil, nil, err
	}
	if len(touch) > 0 {
		s.tmu.Lock()
		for _, h := range touch {
			if len(s.touches) < maxTouches {
				s.touches[h] = struct{}{}
			}
		}
		s.tmu.Unlock()
	}
	return rs, errs, nil
}

// maintain writes pending use times every touchFlush and purges every
// PurgeInterval, until Close; then it writes the pending use times once more.
func (s *Store) maintain() {
	defer s.wg.Done()
	flush := time.NewTicker(min(touchFlush, s.o.PurgeInterval))
	defer flush.Stop()
	purge := time.NewTicker(s.o.PurgeInterval)
	defer purge.Stop()
	for {
		select {
		case <-s.stop:
			s.flushTouches()
			return
		case <-flush.C:
			s.flushTouches()
		case <-purge.C:
			s.flushTouches()
			s.purge()
		}
	}
}

// direct runs fn in a write transaction of its own (the writer may have
// stopped already: maintain runs until Close).
func (s *Store) direct(fn func(b *bolt.Bucket) error) error {
	if s.broken.Load() {
		return s.brokenErr()
	}
	err := guard(func() error {
		return s.db.Update(func(tx *bolt.Tx) error { return fn(tx.Bucket(bucketRecords)) })
	})
	s.noteCorrupt(err, true)
	return err
}

// flushTouches writes now as the use time of the keys Get noted.
func (s *Store) flushTouches() {
	s.tmu.Lock()
	if len(s.touches) == 0 {
		s.tmu.Unlock()
		return
	}
	hs := s.touches
	s.touches = map[[memory.HashSize]byte]struct{}{}
	s.tmu.Unlock()
	now := unixSeconds(s.o.now())
	err := s.direct(func(b *bolt.Bucket) error {
		for h := range hs {
			v := b.Get(h[:])
			if len(v) < useLen {
				continue
			}
			nv := bytes.Clone(v)
			binary.BigEndian.PutUint32(nv, now)
			if err := b.Put(h[:], nv); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.log.Warn().Str("path", s.path).Err(err).Msg("message memory: recording use times failed")
	}
}

// purge deletes records not used within Retention, purgeChunk per
// transaction, so that Puts wait for no long transaction.
func (s *Store) purge() {
	cutoff := unixSeconds(s.o.now().Add(-s.o.Retention))
	total := 0
	for !s.broken.Load() {
		var old [][]byte
		err := guard(func() error {
			return s.db.View(func(tx *bolt.Tx) error {
				return tx.Bucket(bucketRecords).ForEach(func(k, v []byte) error {
					if len(v) < useLen || binary.BigEndian.Uint32(v) < cutoff {
						old = append(old, bytes.Clone(k))
						if len(old) >= purgeChunk {
							return errChunk
						}
					}
					return nil
				})
			})
		})
		if err != nil && !errors.Is(err, errChunk) {
			s.noteCorrupt(err, false)
			s.log.Warn().Str("path", s.path).Err(err).Msg("message memory: purge failed")
			return
		}
		if len(old) == 0 {
			break
		}
		n := 0
		err = s.direct(func(b *bolt.Bucket) error {
			for _, k := range old {
				// Used again since the scan? Keep it.
				if v := b.Get(k); v != nil && len(v) >= useLen && binary.BigEndian.Uint32(v) >= cutoff {
					continue
				}
				if err := b.Delete(k); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		if err != nil {
			s.log.Warn().Str("path", s.path).Err(err).Msg("message memory: purge failed")
			return
		}
		total += n
		if len(old) < purgeChunk || n == 0 {
			break
		}
		select {
		case <-s.stop:
			return
		default:
		}
	}
	if total > 0 {
		s.log.Info().Str("path", s.path).Int("deleted", total).Dur("retention", s.o.Retention).
			Msg("message memory: purged records not used within the retention")
	}
}

var errChunk = errors.New("chunk full")

func unixSeconds(t time.Time) uint32 {
	u := t.Unix()
	if u < 0 {
		return 0
	}
	if u > 1<<32-1 {
		return 1<<32 - 1
	}
	return uint32(u)
}
