package throttle

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Shared is a store of counts that several instances use, so a guesser
// cannot spread its attempts over them.
type Shared interface {
	store
}

// DefaultKeyPrefix starts the keys of a Redis store.
const DefaultKeyPrefix = "popgate:login:v1:"

// Redis keeps the counts in redis: one string per key, INCRemented, with a
// TTL of the window from the first attempt and of the lockout from the
// attempt that reaches the limit, so redis forgets them by itself. One
// script checks the locks and counts the attempt atomically.
type Redis struct {
	c      redis.UniversalClient
	prefix string
}

// NewRedis returns a Shared store on c (the message memory's client) with
// keys under prefix ("" is DefaultKeyPrefix).
func NewRedis(c redis.UniversalClient, prefix string) *Redis {
	if prefix == "" {
		prefix = DefaultKeyPrefix
	}
	return &Redis{c: c, prefix: prefix}
}

// attemptScript: KEYS are the counters' keys, ARGV their limits, then the
// window and the lockout in milliseconds. It returns {i, pttl} when counter
// i is locked, else {0, count before, …}.
var attemptScript = redis.NewScript(`
local n = #KEYS
for i = 1, n do
  local c = tonumber(redis.call('GET', KEYS[i]) or '0')
  if c >= tonumber(ARGV[i]) then
    return {i, redis.call('PTTL', KEYS[i])}
  end
end
local out = {0}
for i = 1, n do
  local c = redis.call('INCR', KEYS[i])
  if c == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[n+1]) end
  if c >= tonumber(ARGV[i]) then redis.call('PEXPIRE', KEYS[i], ARGV[n+2]) end
  out[i+1] = c - 1
end
return out
`)

func (r *Redis) attempt(ctx context.Context, cs []counter, window, lockout time.Duration) (out outcome, err error) {
	defer func() {
		if p := recover(); p != nil { // a reply the client did not expect
			err = fmt.Errorf("redis: client panic: %v", p)
		}
	}()
	keys := make([]string, len(cs))
	args := make([]any, 0, len(cs)+2)
	for i, c := range cs {
		keys[i] = r.prefix + c.key
		args = append(args, c.limit)
	}
	args = append(args, max(window.Milliseconds(), 1), max(lockout.Milliseconds(), 1))
	res, err := attemptScript.Run(ctx, r.c, keys, args...).Int64Slice()
	if err != nil {
		return outcome{}, fmt.Errorf("redis: %w", err)
	}
	switch {
	case len(res) == 2 && res[0] >= 1 && int(res[0]) <= len(cs):
		retry := time.Duration(res[1]) * time.Millisecond
		if res[1] < 0 { // no TTL: cannot happen with this script alone
			retry = lockout
		}
		return outcome{locked: int(res[0]) - 1, retry: retry}, nil
	case len(res) == len(cs)+1 && res[0] == 0:
		out := outcome{locked: -1, before: make([]int, len(cs))}
		for i := range cs {
			out.before[i] = int(res[i+1])
		}
		return out, nil
	}
	return outcome{}, fmt.Errorf("redis: unexpected reply %s to the login throttle's script", strconv.Quote(fmt.Sprint(res)))
}

func (r *Redis) reset(ctx context.Context, keys []string) error {
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = r.prefix + k
	}
	if err := r.c.Del(ctx, full...).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	return nil
}
