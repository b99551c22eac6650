// Package redisstore is the shared memory.Store: records in redis, so that
// popgate instances behind a balancer remember one another's decisions.
//
// A record is the string KeyPrefix + hex(Key.Hash) holding memory.Encode of
// the record, with a TTL of Options.Retention: redis itself forgets a record
// not used for that long. A Get renews the TTL in the same command (GETEX);
// to keep that cheap, each Store renews a key at most once a day (or a
// quarter of the retention, if shorter), remembering up to 100,000 renewed
// keys. GetMany is one MGET (plus, in the same round trip, a PEXPIRE for the
// keys found that are due a renewal).
//
// Every call is bounded by Options.Timeout; a failure of any kind (redis
// down, slow, a connection cut, a reply that is not what was asked for) is
// returned as an error, which the caller treats as a miss. New does not
// connect: popgate starts while redis is down, and the client connects (and
// reconnects after a restart) as calls come.
//
// Multi-key commands (MGET, DEL) need all keys on one node: a Redis Cluster
// is not supported, a single redis (with replicas, Sentinel or a proxy in
// front) is.
package redisstore

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters/memory"
)

// Options configure a Store; zero values take the defaults.
type Options struct {
	Address  string // host:port (required)
	Username string
	Password string
	DB       int
	TLS      *tls.Config // nil: plain TCP
	// Timeout bounds each call, connecting included (default 200ms).
	Timeout time.Duration
	// Retention is the records' TTL, renewed on use (default 30 days).
	Retention time.Duration
	// KeyPrefix starts every key (default "popgate:mem:v1:").
	KeyPrefix string
	// Log gets a warning for a stored value that does not decode (GetMany
	// then reports it as missing). The zero Logger logs nothing.
	Log zerolog.Logger
}

const (
	// DefaultTimeout is Options.Timeout's default.
	DefaultTimeout = 200 * time.Millisecond
	// DefaultRetention is Options.Retention's default.
	DefaultRetention = 30 * 24 * time.Hour
	// DefaultKeyPrefix is Options.KeyPrefix's default.
	DefaultKeyPrefix = "popgate:mem:v1:"

	maxRenewed = 100000
)

// Store is a memory.Store in redis. It is safe for concurrent use.
type Store struct {
	c          *redis.Client
	o          Options
	renewAfter time.Duration
	now        func() time.Time

	mu      sync.Mutex
	renewed map[[memory.HashSize]byte]time.Time // when this Store last set a key's TTL
}

var _ memory.Store = (*Store)(nil)

// silenceClient keeps go-redis from writing its own log lines (plain text
// on standard error, which would break popgate's JSON log): every error it
// would log reaches the caller as an error anyway.
var silenceClient sync.Once

type noLogging struct{}

func (noLogging) Printf(context.Context, string, ...any) {}

// New makes a Store for the redis at o.Address. It does not connect.
func New(o Options) (*Store, error) {
	silenceClient.Do(func() { redis.SetLogger(noLogging{}) })
	if o.Address == "" {
		return nil, errors.New("redisstore: no address")
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Retention <= 0 {
		o.Retention = DefaultRetention
	}
	if o.Retention < time.Millisecond {
		return nil, fmt.Errorf("redisstore: retention %v is under a millisecond", o.Retention)
	}
	if o.KeyPrefix == "" {
		o.KeyPrefix = DefaultKeyPrefix
	}
	c := redis.NewClient(&redis.Options{
		Addr:      o.Address,
		Username:  o.Username,
		Password:  o.Password,
		DB:        o.DB,
		TLSConfig: o.TLS,
		// Every call has a deadline of Timeout (its context), which the
		// client applies to its socket too.
		ContextTimeoutEnabled: true,
		DialTimeout:           o.Timeout,
		ReadTimeout:           o.Timeout,
		WriteTimeout:          o.Timeout,
		PoolTimeout:           o.Timeout,
		// A retry happens only within the call's Timeout: it turns a
		// pooled connection that died (a restarted redis) into a success.
		MaxRetries:         2,
		MinRetryBackoff:    2 * time.Millisecond,
		MaxRetryBackoff:    20 * time.Millisecond,
		DialerRetries:      1,
		DialerRetryTimeout: 10 * time.Millisecond,
		// No CLIENT SETINFO and no maintenance notifications: round trips
		// at connect that older redis versions refuse anyway.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	return &Store{
		c: c, o: o,
		renewAfter: min(24*time.Hour, o.Retention/4),
		now:        time.Now,
		renewed:    map[[memory.HashSize]byte]time.Time{},
	}, nil
}

// Client is the store's redis client, for other state that instances share
// through the same redis (the login throttle): one pool, one set of
// timeouts. Store.Close closes it.
func (s *Store) Client() *redis.Client { return s.c }

// Close closes the client's connections.
func (s *Store) Close() error { return s.c.Close() }

func (s *Store) key(h [memory.HashSize]byte) string {
	return s.o.KeyPrefix + hex.EncodeToString(h[:])
}

// call runs f with the call's deadline; a panic in the client (a reply it
// did not expect) is an error too.
func (s *Store) call(ctx context.Context, f func(ctx context.Context) error) (err error) {
	ctx, cancel := context.WithTimeout(ctx, s.o.Timeout)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("redisstore: client panic: %v", p)
		}
	}()
	if err := f(ctx); err != nil {
		return fmt.Errorf("redisstore: %w", err)
	}
	return nil
}

// due reports whether h's TTL is due a renewal by this Store.
func (s *Store) due(h [memory.HashSize]byte, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.renewed[h]
	return !ok || now.Sub(t) >= s.renewAfter
}

// renewedAt notes that h's TTL was set at now.
func (s *Store) renewedAt(now time.Time, hs ...[memory.HashSize]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.renewed)+len(hs) > maxRenewed {
		// Forgetting costs one renewal per key: cheaper than an LRU.
		clear(s.renewed)
	}
	for _, h := range hs {
		s.renewed[h] = now
	}
}

// Put stores r under k with a TTL of Retention.
func (s *Store) Put(ctx context.Context, k memory.Key, r *memory.Record) error {
	if err := r.Validate(); err != nil {
		return err
	}
	h := k.Hash()
	v := memory.Encode(r)
	now := s.now()
	if err := s.call(ctx, func(ctx context.Context) error {
		return s.c.Set(ctx, s.key(h), v, s.o.Retention).Err()
	}); err != nil {
		return err
	}
	s.renewedAt(now, h)
	return nil
}

// Delete removes the records of ks in one DEL.
func (s *Store) Delete(ctx context.Context, ks ...memory.Key) error {
	if len(ks) == 0 {
		return nil
	}
	keys := make([]string, len(ks))
	for i, k := range ks {
		keys[i] = s.key(k.Hash())
	}
	return s.call(ctx, func(ctx context.Context) error { return s.c.Del(ctx, keys...).Err() })
}

// Get returns k's record, or nil when there is none; renewing its TTL
// (GETEX) when this Store has not done so within a day. A stored value that
// does not decode is an error.
func (s *Store) Get(ctx context.Context, k memory.Key) (*memory.Record, error) {
	h := k.Hash()
	now := s.now()
	renew := s.due(h, now)
	var v string
	err := s.call(ctx, func(ctx context.Context) error {
		var err error
		if renew {
			v, err = s.c.GetEx(ctx, s.key(h), s.o.Retention).Result()
		} else {
			v, err = s.c.Get(ctx, s.key(h)).Result()
		}
		return err
	})
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if renew {
		s.renewedAt(now, h)
	}
	r, err := memory.Decode([]byte(v))
	if err != nil {
		return nil, fmt.Errorf("redisstore: %s: %w", s.key(h), err)
	}
	return r, nil
}

// GetMany returns one entry per key, nil where there is none, in one round
// trip: an MGET, and PEXPIREs for the keys due a renewal. A stored value that
// does not decode counts as none (and is logged).
func (s *Store) GetMany(ctx context.Context, ks []memory.Key) ([]*memory.Record, error) {
	rs := make([]*memory.Record, len(ks))
	if len(ks) == 0 {
		return rs, nil
	}
	now := s.now()
	hs := make([][memory.HashSize]byte, len(ks))
	keys := make([]string, len(ks))
	var due []int
	for i, k := range ks {
		hs[i] = k.Hash()
		keys[i] = s.key(hs[i])
		if s.due(hs[i], now) {
			due = append(due, i)
		}
	}
	var vals []any
	err := s.call(ctx, func(ctx context.Context) error {
		if len(due) == 0 {
			var err error
			vals, err = s.c.MGet(ctx, keys...).Result()
			return err
		}
		// One round trip: MGET, then the renewals (a PEXPIRE of a key
		// that does not exist does nothing).
		var mget *redis.SliceCmd
		_, err := s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			mget = p.MGet(ctx, keys...)
			for _, i := range due {
				p.PExpire(ctx, keys[i], s.o.Retention)
			}
			return nil
		})
		if err != nil {
			return err
		}
		vals, err = mget.Result()
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(vals) != len(ks) {
		return nil, fmt.Errorf("redisstore: MGET of %d keys answered %d values", len(ks), len(vals))
	}
	var renewed [][memory.HashSize]byte
	for i, v := range vals {
		if v == nil {
			continue
		}
		str, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("redisstore: MGET answered a %T for %s", v, keys[i])
		}
		r, err := memory.Decode([]byte(str))
		if err != nil {
			s.o.Log.Warn().Str("key", keys[i]).Err(err).Msg("message memory: a stored record does not decode; treated as missing")
			continue
		}
		rs[i] = r
	}
	for _, i := range due {
		if rs[i] != nil {
			renewed = append(renewed, hs[i])
		}
	}
	if len(renewed) > 0 {
		s.renewedAt(now, renewed...)
	}
	return rs, nil
}
