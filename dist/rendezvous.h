// How the ranks of a data-parallel run meet before NCCL starts: every rank says hello to rank 0
// (who it is and what it runs), rank 0 checks the hellos together and hands every rank either
// its blob (the NCCL unique id) or the error that ends the run, so that an inconsistent launch
// fails on every rank with the same clear message, within the timeout, never a hang.
//
// Two ways to meet, chosen by the launcher's environment (dist/distributed.h):
// - torchrun with TORCHELASTIC_USE_AGENT_STORE=True: through the agent's TCPStore on
//   MASTER_ADDR:MASTER_PORT (dist/tcp_store.h). Each rank takes a ticket (ADD
//   <prefix>joined) and SETs its hello under <prefix>hello/<ticket>; rank 0 waits for tickets
//   1..world, checks them and SETs <prefix>verdict, which the others wait for.
// - otherwise: rank 0 listens on MASTER_PORT; each other rank connects to
//   MASTER_ADDR:MASTER_PORT, sends its hello and reads the verdict. A connection whose first
//   bytes are not a coil hello (a port scanner, a stray client) is dropped and the rendezvous
//   goes on; one that never speaks does not hold the others up.
//
// Wire format (little-endian):
//   hello    u32 magic "COIL" (0x4C494F43), u32 version, i32 rank, i32 world, i32 local rank,
//            u64 config hash, u16 length + host name, u16 length + GPU identity
//   verdict  u32 magic, u32 status (0 ok, 1 error), u32 length + bytes (the blob or the error)
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "dist/distributed.h"

namespace coil::dist {

constexpr uint32_t kRendezvousMagic = 0x4C494F43;  // "COIL" in the first four bytes
constexpr uint32_t kRendezvousVersion = 1;

struct Hello {
  int rank = 0, world_size = 1, local_rank = 0;
  uint64_t config_hash = 0;  // of the resolved config: ranks must run the same one
  std::string host;          // this machine's name (for messages)
  std::string device;        // the GPU's identity (its UUID), empty where there is none
  uint32_t version = kRendezvousVersion;
};

std::vector<uint8_t> encode_hello(const Hello& hello);
enum class ParseResult { ok, need_more, invalid };
// Decodes a hello from the front of `data`; `used` bytes on ok, `why` on invalid.
ParseResult decode_hello(const std::vector<uint8_t>& data, Hello& out, size_t& used, std::string& why);

// Rank 0's check of all the hellos (its own included): every rank of the world exactly once,
// the same world size, version and config, no GPU used by two ranks. The error, or "".
std::string check_hellos(const std::vector<Hello>& hellos, int world_size);

// Meets the other ranks (see above) and returns rank 0's `blob` on every rank, or raises the
// verdict's error, or a timeout error naming who did not come, after at most timeout_s.
std::vector<uint8_t> rendezvous(const DistEnv& env, const Hello& hello, const std::vector<uint8_t>& blob,
                                double timeout_s);

}  // namespace coil::dist
