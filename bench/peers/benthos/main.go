// A Benthos v4.27.0 binary with only the components bench/brokers.sh uses (http_server input, kafka and
// amqp_0_9 outputs, sync_response). Benthos' own cmd/benthos imports every component, one of which pulls a
// module the Go module proxy refuses; this one compiles against the same public API.
package main

import (
	"context"

	_ "github.com/benthosdev/benthos/v4/public/components/amqp09"
	_ "github.com/benthosdev/benthos/v4/public/components/io"
	_ "github.com/benthosdev/benthos/v4/public/components/kafka"
	_ "github.com/benthosdev/benthos/v4/public/components/pure"
	"github.com/benthosdev/benthos/v4/public/service"
)

func main() {
	service.RunCLI(context.Background())
}
