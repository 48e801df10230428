// A real OpenID Connect provider on loopback for Herald's sign-in tests: panva's
// oidc-provider (OpenID Certified), with its built-in login and consent pages.
//
// It listens at once on 127.0.0.1 (PORT, default 0: any free port) and prints
// `listening http://127.0.0.1:<port>`. It then reads one JSON line from standard input, since
// the client's redirect URI is known only once Herald is up:
//
//   {"clients": [{"client_id": "herald", "client_secret": "...", "redirect_uris": ["..."],
//                 "id_token_signed_response_alg": "RS256"}],
//    "accounts": {"alice": {"email": "alice@example.com", "email_verified": true,
//                            "name": "Alice"}}}
//
// and serves the provider from then on (until then, 503), printing `ready`. The issuer is
// its own address. The login page takes any password for a configured account.

import { createServer } from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import { createInterface } from 'node:readline';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT ?? 0);
let handler = null;

const server = createServer((req, res) => {
  if (handler) {
    handler(req, res);
  } else {
    res.statusCode = 503;
    res.end('not configured yet');
  }
});

server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  console.log(`listening ${issuer}`);
  const lines = createInterface({ input: process.stdin });
  lines.once('line', (line) => {
    const setup = JSON.parse(line);
    const provider = configure(issuer, setup);
    handler = provider.callback();
    console.log('ready');
  });
});

function configure(issuer, { clients, accounts }) {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  const provider = new Provider(issuer, {
    clients: clients.map((client) => ({
      response_types: ['code'],
      grant_types: ['authorization_code'],
      ...client,
    })),
    jwks: {
      keys: [
        { ...rsa, kid: 'rsa-1', use: 'sig', alg: 'RS256' },
        { ...ec, kid: 'ec-1', use: 'sig', alg: 'ES256' },
      ],
    },
    pkce: { required: () => true },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
    },
    // The claims a scope grants go into the ID token itself, as Google's and others' do.
    conformIdTokenClaims: false,
    cookies: { keys: ['herald-test-cookie-key'] },
    async findAccount(ctx, id) {
      const account = accounts[id];
      if (!account) return undefined;
      return {
        accountId: id,
        async claims() {
          return { sub: id, ...account };
        },
      };
    },
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  return provider;
}
