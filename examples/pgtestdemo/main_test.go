package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"go.uber.org/goleak"

	"github.com/unifiedsql/unified/examples/internal/exampletest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestDemo(t *testing.T) {
	out := exampletest.Output(t)
	res := run(t, out)
	assert.Positive(t, res.Acked)
	assert.GreaterOrEqual(t, res.Stored, res.Acked, "no acknowledged write is lost with synchronous replication")
	assert.GreaterOrEqual(t, res.Resumed, time.Duration(0), "writes resumed after the promotion")
	assert.Regexp(t, `c\.FailOver\(\): node[12] promoted`, out.String())
	assert.Contains(t, out.String(), "is a replica of")
}
