"""Constants shared by every module: the audio rate, the CTC vocabulary's special tokens, the scripts' exit codes."""

SAMPLE_RATE = 16_000  # Hz; every wav2vec2 checkpoint is pre-trained on 16 kHz audio

PAD = "[PAD]"  # id 0, doubles as the CTC blank (the model's pad_token_id)
UNK = "[UNK]"  # id 1, characters the vocabulary cannot represent
WORD_DELIMITER = "|"  # id 2, stands for the space between words in CTC labels

BEST_METRICS = ("wer", "cer", "loss", "last")  # what picks a training run's model/ (train.best_metric)

# Exit codes of the scripts (transcribe.py and eval.py use all four; train.py and build_lm.py 0, 1 and 2).
EXIT_OK = 0  # everything done
EXIT_CRASH = 1  # an uncaught exception, with its traceback (Python's own code for it): a bug or the environment
EXIT_USAGE = 2  # bad arguments, config or input, refused in one line before any work (argparse's code too)
EXIT_SOME_FAILED = 3  # the run completed, but some files could not be used: errors.jsonl / dropped.jsonl say which
