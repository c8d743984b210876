"""Preference tuning with TRL's DPOTrainer on a dpo or openai-dpo file from `afs generate`.

Run by afs as, e.g.:

    afs retrain --train-cmd 'python examples/trainers/trl_dpo.py --model Qwen/Qwen2.5-0.5B-Instruct'

with `format = "dpo"` (or "openai-dpo") in [generator]. `--check-data` only loads and
checks the dataset. The reference model is a frozen copy of --model (TRL's default).
"""

import afs_data


def main():
    args = afs_data.arguments("dpo", __doc__.splitlines()[0])
    if args.check_data:
        afs_data.check_data(args)
        return
    train_dataset, _, _ = afs_data.load(args.data, "dpo")

    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        report_to=[],
        save_strategy="no",
        **({"learning_rate": args.learning_rate} if args.learning_rate else {}),
    )
    trainer = DPOTrainer(model=args.model, args=config, train_dataset=train_dataset)
    result = trainer.train()
    trainer.save_model(args.output_dir)
    trainer.processing_class.save_pretrained(args.output_dir)
    afs_data.report(args, result)


if __name__ == "__main__":
    main()
