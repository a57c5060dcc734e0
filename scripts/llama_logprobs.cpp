// Teacher-forced log-probabilities from llama.cpp, for scripts/gguf_fidelity.py.
//
//   llama_logprobs MODEL.gguf PROMPT TOKEN,TOKEN,...
//
// Feeds PROMPT (tokenized with the file's special tokens, as llama-completion does), then each given
// token in turn, and prints one line per given token: its id, its log-probability under llama.cpp's
// logits before it was fed, and llama.cpp's greedy choice at that step. f32 KV cache and no flash
// attention, as llamactl computes attention; 2 threads.
#include "llama.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

int main(int argc, char ** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT TOKEN,TOKEN,...\n", argv[0]);
        return 2;
    }
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) {
        fprintf(stderr, "%s: cannot load\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 1024;
    cp.n_batch = 1024;
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.n_threads = cp.n_threads_batch = 2;
    llama_context * ctx = llama_init_from_model(model, cp);

    std::vector<llama_token> prompt(1024);
    int n = llama_tokenize(vocab, argv[2], strlen(argv[2]), prompt.data(), prompt.size(), true, false);
    if (n < 0) {
        fprintf(stderr, "prompt too long\n");
        return 1;
    }
    std::vector<llama_token> given;
    for (char * s = strtok(argv[3], ","); s; s = strtok(nullptr, ",")) {
        given.push_back(atoi(s));
    }
    const int n_vocab = llama_vocab_n_tokens(vocab);
    llama_batch batch = llama_batch_get_one(prompt.data(), n);
    for (llama_token & tok : given) {
        if (llama_decode(ctx, batch)) {
            fprintf(stderr, "llama_decode failed\n");
            return 1;
        }
        const float * logits = llama_get_logits_ith(ctx, -1);
        int best = 0;
        for (int i = 1; i < n_vocab; i++) {
            best = logits[i] > logits[best] ? i : best;
        }
        double z = 0;
        for (int i = 0; i < n_vocab; i++) {
            z += exp((double) logits[i] - logits[best]);
        }
        printf("%d %.7f %d\n", tok, logits[tok] - logits[best] - log(z), best);
        batch = llama_batch_get_one(&tok, 1);
    }
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
